#!/usr/bin/env bash
# make e2e: the Go e2e tests (build tag e2e) against the cluster e2e-up made.
# On failure it prints the agent's, kubelet's and pods' logs.
source "$(dirname "$0")/lib.sh"
tools
cluster_env
ensure_helm
export E2E_AGENT_NAMESPACE=$NAMESPACE E2E_HELM=$HELM E2E_VALUES=$E2E_VALUES E2E_CHART=$REPO/charts/kube-efvi E2E_WORK E2E_EFLATENCY=$REPO/bin/eflatency
trap 'rc=$?; [ $rc -eq 0 ] || { echo "e2e FAILED (rc $rc)" >&2; dump_logs; }' EXIT
go test -tags ${E2E_TAGS:-e2e} -count=1 -timeout 20m -v ${E2E_TEST_ARGS:-} ./e2e/...
