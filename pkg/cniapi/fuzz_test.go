package cniapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzServerRequest: any body on any method gets a JSON answer, never a
// panic; an error answer is a CNI error with a message.
func FuzzServerRequest(f *testing.F) {
	for _, seed := range []string{`{}`, `{"network":"k8s","containerID":"a","ifname":"eth0","ips":["10.0.0.1"]}`,
		`{"ips":["nope"]}`, `{"valid":[{"containerID":"a"}]}`, `[`, ``, `null`, `{"ips":[1]}`} {
		for _, m := range []string{methodAdd, methodDel, methodCheck, methodGC, methodStatus} {
			f.Add(m, []byte(seed))
		}
	}
	h := NewServer(&fakeAgent{}, nil).http.Handler
	f.Fuzz(func(t *testing.T, method string, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "http://agent/v1/x", bytes.NewReader(body))
		req.URL.Path = pathPrefix + method
		h.ServeHTTP(rec, req)
		if rec.Code < 400 || rec.Code == http.StatusNotFound && rec.Header().Get("Content-Type") != "application/json" || rec.Code == http.StatusMethodNotAllowed {
			return // success, or the mux's answer to a path that is no method
		}
		var ce Error
		if err := json.Unmarshal(rec.Body.Bytes(), &ce); err != nil || ce.Msg == "" || ce.Code == 0 {
			t.Fatalf("%s %q: HTTP %d with body %q: not a CNI error", method, body, rec.Code, rec.Body.String())
		}
	})
}
