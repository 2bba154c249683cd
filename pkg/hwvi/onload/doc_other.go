//go:build !(onload && cgo)

// Package onload is the hardware backend's NIC operations over Onload's
// libciul. This build has no onload tag (or no cgo), so it is empty: build
// with -tags onload against an Onload installation (see make build-onload).
package onload
