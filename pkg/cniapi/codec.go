package cniapi

import (
	"encoding/json"
	"fmt"
)

// jsonCodec marshals the plain Go messages as JSON. It is forced on both
// ends (grpc.ForceServerCodec, grpc.ForceCodec), never registered globally.
type jsonCodec struct{}

func (jsonCodec) Name() string { return "json" }

func (jsonCodec) Marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cniapi: marshal %T: %w", v, err)
	}
	return b, nil
}

func (jsonCodec) Unmarshal(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("cniapi: unmarshal %T: %w", v, err)
	}
	return nil
}
