// Package k8s checks the Kubernetes manifests of deploy/k8s without a
// cluster. It renders each kustomization the way kustomize does for the
// fields those files use (resources and strategic-merge patches; any other
// field fails), decodes every object strictly into the Kubernetes API types
// — as the API server's strict field validation does: unknown or duplicate
// fields, a field's name in the wrong case and unknown kinds are errors —
// and checks what the objects say about each other, about the services
// (their settings, ports and routes) and about the NATS Helm release
// (check_test.go). k8s_test.go runs the checks, compares the rendering with
// `kubectl kustomize` where kubectl is installed, and breaks copies of the
// files one way at a time to show that every check can fail.
package k8s
