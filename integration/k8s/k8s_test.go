package k8s

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"
)

func repoInputs() inputs {
	return inputs{k8s: filepath.Join(repo, "deploy", "k8s"), readme: filepath.Join(repo, "README.md")}
}

// TestManifests: every manifest decodes strictly and the cross-references
// hold (check_test.go).
func TestManifests(t *testing.T) {
	for _, p := range check(repoInputs()) {
		t.Error(p)
	}
}

// TestKustomizeAgrees renders each kustomization with kubectl's kustomize
// too, where kubectl is installed (no cluster needed), and requires the
// same objects: this package's rendering is what `kubectl apply -k` applies.
func TestKustomizeAgrees(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed")
	}
	dirs, err := entries(repoInputs().k8s)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		diffs, err := kustomizeDiff(kubectl, dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range diffs {
			t.Error(d)
		}
	}
}

// kustomizeDiff returns how this package's rendering of dir differs from
// `kubectl kustomize dir`.
func kustomizeDiff(kubectl, dir string) ([]string, error) {
	r := &renderer{used: map[string]bool{}}
	mine, err := r.render(dir)
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(kubectl, "kustomize", dir).Output()
	if err != nil {
		return nil, fmt.Errorf("kubectl kustomize %s: %w", dir, err)
	}
	theirs, err := decodeAll("kubectl kustomize "+dir, out)
	if err != nil {
		return nil, err
	}
	byKey := map[string]*object{}
	for _, o := range theirs {
		byKey[o.kind()+"/"+o.name()] = o
	}
	var diffs []string
	for _, o := range mine {
		key := o.kind() + "/" + o.name()
		k, ok := byKey[key]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("%s: kustomize does not make %s", dir, o))
			continue
		}
		delete(byKey, key)
		if !equality.Semantic.DeepEqual(o.obj, k.obj) {
			a, _ := json.Marshal(o.obj)
			b, _ := json.Marshal(k.obj)
			diffs = append(diffs, fmt.Sprintf("%s: %s differs:\nhere:      %s\nkustomize: %s", dir, key, a, b))
		}
	}
	for key := range byKey {
		diffs = append(diffs, fmt.Sprintf("%s: kustomize makes %s, this test does not", dir, key))
	}
	return diffs, nil
}

// breakage is one change to a copy of the files, and what check must then
// report.
type breakage struct {
	file     string            // under deploy/k8s, or README.md
	old, new string            // the first old becomes new; a missing old fails the test
	want     string            // a substring of a problem check reports
	add      map[string]string // files added under deploy/k8s
}

var breakages = []breakage{
	// Kustomizations.
	{"base/user/kustomization.yaml", "- pdb.yaml", "- pdbs.yaml", "resource pdbs.yaml", nil},
	{"base/user/kustomization.yaml", "resources:", "namePrefix: x-\nresources:", `unknown field "namePrefix"`, nil},
	{"base/user/kustomization.yaml", "  - hpa.yaml\n", "", "is not referenced by any kustomization", nil},
	{"base/relayer/kustomization.yaml", "  - user-bus.yaml\n", "  - user-bus.yaml\n  - user-bus.yaml\n", "ConfigMap/ws-user-bus is defined twice", nil},
	{"base/user/kustomization.yaml", "", "", "base/user/extra.yaml is not referenced", map[string]string{"base/user/extra.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n"}},
	// Patches: applied as kustomize applies strategic-merge patches, then
	// checked like the rest.
	{"overlays/nats/kustomization.yaml", "  - user-bus.yaml\n", "  - user-bus.yaml\npatches:\n  - path: grace.yaml\n", "overlays/nats/grace.yaml: no such file", nil},
	{"overlays/nats/kustomization.yaml", "  - user-bus.yaml\n", "  - user-bus.yaml\npatches:\n  - path: grace.yaml\n", "terminationGracePeriodSeconds 12 does not exceed", map[string]string{"overlays/nats/grace.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ws-user\nspec:\n  template:\n    spec:\n      terminationGracePeriodSeconds: 12\n"}},
	{"overlays/nats/kustomization.yaml", "  - user-bus.yaml\n", "  - user-bus.yaml\npatches:\n  - path: env.yaml\n", "env NATS_SEEDS is not a setting of ws-user", map[string]string{"overlays/nats/env.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ws-user\nspec:\n  template:\n    spec:\n      containers:\n        - name: ws-user\n          env:\n            - name: NATS_SEEDS\n              value: x\n"}},
	{"overlays/nats/kustomization.yaml", "  - user-bus.yaml\n", "  - user-bus.yaml\npatches:\n  - path: typo.yaml\n", `unknown field "spec.template.spec.terminationGracePeriod"`, map[string]string{"overlays/nats/typo.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ws-user\nspec:\n  template:\n    spec:\n      terminationGracePeriod: 12\n"}},
	{"overlays/nats/kustomization.yaml", "  - user-bus.yaml\n", "  - user-bus.yaml\npatches:\n  - path: other.yaml\n", "patches Deployment/ws-gateway, which no resource defines", map[string]string{"overlays/nats/other.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ws-gateway\n"}},
	// Strict decoding.
	{"base/user/deployment.yaml", "revisionHistoryLimit: 5", "revisionHistoryLimits: 5", `unknown field "spec.revisionHistoryLimits"`, nil},
	{"base/user/deployment.yaml", "containerPort: 8080", "containerport: 8080", `unknown field "spec.template.spec.containers[0].ports[0].containerport"`, nil},
	{"base/user/service.yaml", "type: ClusterIP", "type: ClusterIP\n  type: ClusterIP", `"type" already set`, nil},
	{"base/user/hpa.yaml", "kind: HorizontalPodAutoscaler", "kind: HorizontalPodAutoscalr", `no kind "HorizontalPodAutoscalr"`, nil},
	{"base/user/pdb.yaml", "maxUnavailable: 1", "maxUnavailable: one", `PodDisruptionBudget ws-user: invalid value for IntOrString: invalid type: string is not a percentage`, nil},
	// Selectors and labels.
	{"base/user/service.yaml", "  selector:\n    app.kubernetes.io/name: ws-user", "  selector:\n    app.kubernetes.io/name: ws-usr", "Service ws-user selects the pods of 0 workloads", nil},
	{"base/user/deployment.yaml", "    matchLabels:\n      app.kubernetes.io/name: ws-user", "    matchLabels:\n      app.kubernetes.io/name: gateway", "its selector does not match its pod template's labels", nil},
	{"base/user/deployment.yaml", "          labelSelector:\n            matchLabels:\n              app.kubernetes.io/name: ws-user", "          labelSelector:\n            matchLabels:\n              app.kubernetes.io/name: other", "topologySpreadConstraints (kubernetes.io/hostname) labelSelector", nil},
	{"base/user/service.yaml", "targetPort: http", "targetPort: web", "targetPort web is not a port", nil},
	{"base/relayer/service.yaml", "clusterIP: None", "clusterIP: 10.0.0.10", "serviceName ws-relayer is not headless", nil},
	{"base/relayer/statefulset.yaml", "serviceName: ws-relayer", "serviceName: relayer", `serviceName "relayer" names no Service`, nil},
	// Probes.
	{"base/user/deployment.yaml", "path: /readyz", "path: /ready", "readinessProbe path /ready is not served by ws-user", nil},
	{"base/user/deployment.yaml", "path: /healthz", "path: /readyz", "livenessProbe asks /readyz; it must ask /healthz", nil},
	{"base/relayer/statefulset.yaml", "path: /readyz\n              port: link", "path: /readyz\n              port: admin", "readinessProbe port admin is not a declared port", nil},
	{"base/user/deployment.yaml", "          readinessProbe:\n", "          startupProbe:\n", "no readinessProbe", nil},
	// Settings.
	{"base/user/configmap.yaml", "LOG_LEVEL: info", "LOG_LEVEL: info\n  LOGLEVEL: debug", "ConfigMap ws-user key LOGLEVEL is not a setting of ws-user", nil},
	{"base/relayer/configmap.yaml", "LOG_LEVEL: info", "LOG_LEVEL: info\n  MAX_CONNS: \"10\"", "ConfigMap ws-relayer key MAX_CONNS is not a setting of ws-relayer", nil},
	{"base/user/deployment.yaml", "name: INSTANCE_ID", "name: INSTANCE", "env INSTANCE is not a setting of ws-user", nil},
	{"base/user/configmap.yaml", "SHUTDOWN_TIMEOUT: 10s", "SHUTDOWN_TIMEOUT: ten seconds", `SHUTDOWN_TIMEOUT="ten seconds" is not a valid`, nil},
	{"base/user/configmap.yaml", `PORT: "8080"`, `PORT: "8081"`, "PORT 8081 (what ws-user listens on) is not a declared containerPort", nil},
	{"base/user/deployment.yaml", "name: ws-user-bus", "name: ws-user-buss", "envFrom names ConfigMap ws-user-buss", nil},
	{"base/relayer/statefulset.yaml", "key: RELAY_SECRET", "key: SECRET", "reads Secret wschat-secrets (key SECRET), which neither", nil},
	{"README.md", "kubectl create secret generic wschat-secrets", "kubectl create secret generic wschat-secret", "which neither the manifests define nor README.md creates", nil},
	// Stopping.
	{"base/user/deployment.yaml", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 15", "terminationGracePeriodSeconds 15 does not exceed the preStop sleep (5s) plus SHUTDOWN_TIMEOUT (10s)", nil},
	{"base/relayer/configmap.yaml", "SHUTDOWN_TIMEOUT: 10s", "SHUTDOWN_TIMEOUT: 45s", "terminationGracePeriodSeconds 30 does not exceed the preStop sleep (0s) plus SHUTDOWN_TIMEOUT (45s)", nil},
	{"base/user/deployment.yaml", "seconds: 5", "seconds: 0", "no preStop sleep", nil},
	// Security and resources.
	{"base/user/deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem is not true", nil},
	{"base/relayer/statefulset.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "allowPrivilegeEscalation is not false", nil},
	{"base/relayer/statefulset.yaml", "runAsUser: 65532", "runAsUser: 1000", "runAsUser is not 65532", nil},
	{"base/user/deployment.yaml", "                - ALL", "                - NET_RAW", "capabilities must drop ALL", nil},
	{"base/user/deployment.yaml", "            runAsNonRoot: true\n", "            runAsNonRoot: false\n", "runAsNonRoot is not true", nil}, // the container's overrides the pod's
	{"base/user/deployment.yaml", "            requests:\n              cpu: 250m\n", "            requests:\n", "resources: no cpu request", nil},
	// The relayer.
	{"base/relayer/statefulset.yaml", "replicas: 1", "replicas: 2", "exactly one replica", nil},
	{"base/relayer/configmap.yaml", "DATA_DIR: /data", "DATA_DIR: /var/lib/wschat", "DATA_DIR /var/lib/wschat is not where a volumeClaimTemplate is mounted", nil},
	// PodDisruptionBudget and HorizontalPodAutoscaler.
	{"base/user/pdb.yaml", "      app.kubernetes.io/name: ws-user", "      app.kubernetes.io/name: ws-usr", "PodDisruptionBudget ws-user selects the pods of 0 workloads", nil},
	{"base/user/hpa.yaml", "minReplicas: 2", "minReplicas: 1", "at 1 replicas of Deployment/ws-user", nil},
	{"base/user/hpa.yaml", "    name: ws-user\n  minReplicas", "    name: ws-users\n  minReplicas", "scales apps/v1 Deployment/ws-users, which this build does not define", nil},
	{"base/user/deployment.yaml", "  revisionHistoryLimit: 5", "  replicas: 3\n  revisionHistoryLimit: 5", "sets replicas although HorizontalPodAutoscaler", nil},
	// Ingress.
	{"base/user/ingress.yaml", "                name: ws-user\n", "                name: ws-gateway\n", "backend Service ws-gateway is not defined", nil},
	{"base/user/ingress.yaml", "name: http", "name: web", `backend port "web"/0 is not a port of Service ws-user`, nil},
	{"base/user/ingress.yaml", `proxy-read-timeout: "3600"`, `proxy-read-timeout: "60"`, `proxy-read-timeout is "60"`, nil},
	// The relay tier's wiring.
	{"base/relayer/user-bus.yaml", "ws://ws-relayer:3001", "ws://relayer:3001", "RELAYER_URL ws://relayer:3001: the host names no Service", nil},
	{"base/relayer/user-bus.yaml", "ws://ws-relayer:3001", "ws://ws-relayer:3002", "port 3002 is not a port of Service ws-relayer", nil},
	{"base/relayer/user-bus.yaml", "BUS: relayer\n  RELAYER_URL: ws://ws-relayer:3001", "BUS: local", `BUS="local"`, nil},
	{"overlays/nats/user-bus.yaml", "nats://nats:4222", "nats://nats-client:4222", "NATS_URL nats://nats-client:4222 is not the NATS Helm release's client Service nats:4222", nil},
	{"README.md", "helm install nats nats/nats -f deploy/k8s/nats-values.yaml", "helm install chat nats/nats -f deploy/k8s/nats-values.yaml", "client Service chat-nats:4222", nil},
	{"nats-values.yaml", "replicas: 3", "replicas: 1", "config.cluster.replicas 1 is fewer than ws-user's NATS_REPLICAS 3", nil},
	{"nats-values.yaml", "size: 10Gi", "size: 512Mi", "config.jetstream.fileStore.pvc.size 512Mi does not hold", nil},
	{"nats-values.yaml", "    memoryStore:\n      enabled: true", "    memoryStore:\n      enabled: false", "memoryStore must be enabled", nil},
	{"nats-values.yaml", "config:\n", "fullnameOverride: chat\nconfig:\n", "sets fullnameOverride", nil},
}

// TestChecksCatchBreakage alters a copy of the files one way at a time and
// requires check to report it: no check passes vacuously.
func TestChecksCatchBreakage(t *testing.T) {
	if p := check(copyInputs(t, breakage{})); len(p) > 0 {
		t.Fatalf("the unaltered copy has problems: %v", p)
	}
	for _, br := range breakages {
		in := copyInputs(t, br)
		got := check(in)
		t.Logf("%s: %q → %q: %q", br.file, br.old, br.new, got)
		// A patch this package renders must render as kustomize does.
		if kubectl, err := exec.LookPath("kubectl"); err == nil && len(br.add) > 0 && strings.HasSuffix(br.file, "kustomization.yaml") {
			if diffs, err := kustomizeDiff(kubectl, filepath.Join(in.k8s, filepath.Dir(br.file))); err == nil {
				for _, d := range diffs {
					t.Errorf("%s: %s", br.file, d)
				}
			}
		}
		found := false
		for _, p := range got {
			found = found || strings.Contains(p, br.want)
		}
		if !found {
			t.Errorf("%s: %q → %q: no problem contains %q; got %q", br.file, br.old, br.new, br.want, got)
		}
	}
}

// copyInputs copies deploy/k8s and README.md into a temporary directory,
// with br's change.
func copyInputs(t *testing.T, br breakage) inputs {
	t.Helper()
	src := repoInputs()
	dst := t.TempDir()
	in := inputs{k8s: filepath.Join(dst, "deploy", "k8s"), readme: filepath.Join(dst, "README.md")}
	copyFile := func(from, to, rel string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if br.file != "" && rel == br.file {
			if !strings.Contains(string(b), br.old) {
				t.Fatalf("%s does not contain %q: update the breakage", rel, br.old)
			}
			b = []byte(strings.Replace(string(b), br.old, br.new, 1))
		}
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(src.readme, in.readme, "README.md")
	err := filepath.WalkDir(src.k8s, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(src.k8s, path)
		if err != nil {
			return err
		}
		copyFile(path, filepath.Join(in.k8s, rel), filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for rel, text := range br.add {
		if err := os.WriteFile(filepath.Join(in.k8s, filepath.FromSlash(rel)), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return in
}
