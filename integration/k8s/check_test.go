package k8s

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	relayerapp "github.com/wschat/wschat/services/relayer/app"
	"github.com/wschat/wschat/services/settings"
	userapp "github.com/wschat/wschat/services/user/app"
)

// repo is the repository's root, from integration/k8s.
var repo = filepath.Join("..", "..")

// inputs are the files the checks read; the breakage test points them at
// altered copies.
type inputs struct {
	k8s    string // deploy/k8s
	readme string // README.md
}

// The image's user (deploy/Dockerfile: USER 65532:65532).
const imageUID = 65532

// app is what the manifests may rely on about one service: the variables
// its Config reads, the paths it serves, and its settings parsed the way
// the service parses them.
type app struct {
	name     string // ws-user or ws-relayer, also its image's name
	settings map[string]string
	routes   map[string]bool
	load     func(getenv func(string) string) (appConfig, error)
}

// appConfig is the part of a service's parsed settings the checks use.
type appConfig struct {
	port         int
	shutdown     time.Duration
	bus          string
	relayerURL   string
	natsURL      []string
	natsReplicas int
	natsMaxBytes int64
	dataDir      string
}

// routeRE finds the GET routes of a service's mux in its app.go.
var routeRE = regexp.MustCompile(`mux\.Handle(?:Func)?\("GET (/[^" ]*)"`)

func loadApps() (map[string]*app, error) {
	routes := func(svc string) (map[string]bool, error) {
		b, err := os.ReadFile(filepath.Join(repo, "services", svc, "app", "app.go"))
		if err != nil {
			return nil, err
		}
		out := map[string]bool{}
		for _, m := range routeRE.FindAllStringSubmatch(string(b), -1) {
			out[m[1]] = true
		}
		return out, nil
	}
	userRoutes, err := routes("user")
	if err != nil {
		return nil, err
	}
	relayerRoutes, err := routes("relayer")
	if err != nil {
		return nil, err
	}
	return map[string]*app{
		"ws-user": {
			name: "ws-user", settings: settings.Defaults[userapp.Config](), routes: userRoutes,
			load: func(getenv func(string) string) (appConfig, error) {
				var c userapp.Config
				err := settings.Load(&c, getenv)
				return appConfig{port: c.Port, shutdown: c.ShutdownTimeout, bus: c.Bus, relayerURL: c.RelayerURL,
					natsURL: c.NATSURL, natsReplicas: c.NATSReplicas, natsMaxBytes: c.NATSMaxBytes}, err
			},
		},
		"ws-relayer": {
			name: "ws-relayer", settings: settings.Defaults[relayerapp.Config](), routes: relayerRoutes,
			load: func(getenv func(string) string) (appConfig, error) {
				var c relayerapp.Config
				err := settings.Load(&c, getenv)
				return appConfig{port: c.Port, shutdown: c.ShutdownTimeout, dataDir: c.DataDir}, err
			},
		},
	}, nil
}

// problems collects what the checks find.
type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

// entries are the kustomizations one applies: base and every overlay.
func entries(k8sDir string) ([]string, error) {
	out := []string{filepath.Join(k8sDir, "base")}
	overlays, err := os.ReadDir(filepath.Join(k8sDir, "overlays"))
	if err != nil {
		return nil, err
	}
	for _, e := range overlays {
		if e.IsDir() {
			out = append(out, filepath.Join(k8sDir, "overlays", e.Name()))
		}
	}
	return out, nil
}

// check runs every check and returns the problems found, sorted.
func check(in inputs) problems {
	var p problems
	apps, err := loadApps()
	if err != nil {
		p.add("services: %v", err)
		return p
	}
	readme, err := os.ReadFile(in.readme)
	if err != nil {
		p.add("%v", err)
		return p
	}
	helm := loadHelm(&p, in.k8s, string(readme))
	dirs, err := entries(in.k8s)
	if err != nil {
		p.add("%v", err)
		return p
	}
	r := &renderer{used: map[string]bool{}}
	rendered := true
	for _, dir := range dirs {
		objs, err := r.render(dir)
		if err != nil {
			p.add("%v", err)
			rendered = false
			continue
		}
		checkBuild(&p, dir, objs, apps, helm, string(readme))
	}
	// A manifest no kustomization names is never applied (known once all
	// of them rendered).
	filepath.WalkDir(in.k8s, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			p.add("%v", err)
			return nil
		}
		ext := filepath.Ext(path)
		if d.IsDir() || (ext != ".yaml" && ext != ".yml") || path == helm.valuesFile {
			return nil
		}
		if rendered && !r.used[filepath.Clean(path)] {
			p.add("%s is not referenced by any kustomization (base, overlays/*)", path)
		}
		return nil
	})
	// base/user is part of base and of overlays/nats: one problem, once.
	slices.Sort(p)
	return slices.Compact(p)
}

// helmNATS is what ws-user may assume about the NATS Helm release: the
// client Service's name and port, from README.md's `helm install` and
// nats-values.yaml, and the values themselves.
type helmNATS struct {
	valuesFile string
	service    string
	port       int
	values     map[string]any
}

var helmInstallRE = regexp.MustCompile(`helm install (\S+) nats/nats -f deploy/k8s/nats-values\.yaml`)

func loadHelm(p *problems, k8sDir, readme string) *helmNATS {
	h := &helmNATS{valuesFile: filepath.Join(k8sDir, "nats-values.yaml"), port: 4222}
	b, err := os.ReadFile(h.valuesFile)
	if err != nil {
		p.add("%v", err)
		return h
	}
	if err := yaml.Unmarshal(b, &h.values); err != nil {
		p.add("%s: %v", h.valuesFile, err)
		return h
	}
	m := helmInstallRE.FindStringSubmatch(readme)
	if m == nil {
		p.add("README.md does not show `helm install <release> nats/nats -f deploy/k8s/nats-values.yaml`")
		return h
	}
	// The chart's nats.fullname: the release's name when it contains the
	// chart's, else <release>-nats; its Service takes that name
	// (nats-io/k8s helm/charts/nats/test/defaults_test.go). Overrides of
	// either would have to be followed here.
	for _, k := range [][]string{{"fullnameOverride"}, {"nameOverride"}, {"service", "name"}} {
		if v, ok := lookup(h.values, k...); ok && v != nil {
			p.add("%s sets %s: this test derives the client Service's name without it; follow it there", h.valuesFile, strings.Join(k, "."))
		}
	}
	h.service = m[1]
	if !strings.Contains(m[1], "nats") {
		h.service = m[1] + "-nats"
	}
	if v, ok := lookup(h.values, "config", "nats", "port"); ok {
		if f, ok := v.(float64); ok {
			h.port = int(f)
		}
	}
	return h
}

// lookup returns the value at a path of nested YAML maps.
func lookup(m map[string]any, path ...string) (any, bool) {
	var v any = m
	for _, k := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = mm[k]; !ok {
			return nil, false
		}
	}
	return v, true
}

// workload is a Deployment or a StatefulSet.
type workload struct {
	id          string
	kind, name  string
	selector    *metav1.LabelSelector
	template    *corev1.PodTemplateSpec
	replicas    *int32
	claims      []string // volumeClaimTemplates
	serviceName string
	app         *app // of its (first) container
}

// runs tells whether a label selector (map form) selects the workload's pods.
func (w *workload) selectedBy(sel map[string]string) bool {
	return len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(w.template.Labels))
}

// port resolves a port (name or number) to a number the workload's
// containers declare.
func (w *workload) port(p intstr.IntOrString) (int, bool) {
	for _, c := range w.template.Spec.Containers {
		if n, ok := containerPort(&c, p); ok {
			return n, true
		}
	}
	return 0, false
}

func containerPort(c *corev1.Container, p intstr.IntOrString) (int, bool) {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return int(cp.ContainerPort), true
		}
	}
	return 0, false
}

// build is one rendered kustomization, indexed.
type build struct {
	dir        string
	workloads  []*workload
	services   map[string]*corev1.Service
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
	pdbs       []*policyv1.PodDisruptionBudget
	hpas       []*autoscalingv2.HorizontalPodAutoscaler
	ingresses  []*networkingv1.Ingress
	// secretRefs: per service, the Secret name/key each variable reads.
	secretRefs map[string]map[string]string
	// configs: the parsed settings of each workload's container.
	configs map[*workload]appConfig
}

func index(dir string, objs []*object) *build {
	b := &build{dir: dir, services: map[string]*corev1.Service{}, configMaps: map[string]*corev1.ConfigMap{},
		secrets: map[string]*corev1.Secret{}, secretRefs: map[string]map[string]string{}, configs: map[*workload]appConfig{}}
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			b.workloads = append(b.workloads, &workload{id: o.String(), kind: "Deployment", name: v.Name,
				selector: v.Spec.Selector, template: &v.Spec.Template, replicas: v.Spec.Replicas})
		case *appsv1.StatefulSet:
			w := &workload{id: o.String(), kind: "StatefulSet", name: v.Name, selector: v.Spec.Selector,
				template: &v.Spec.Template, replicas: v.Spec.Replicas, serviceName: v.Spec.ServiceName}
			for _, c := range v.Spec.VolumeClaimTemplates {
				w.claims = append(w.claims, c.Name)
			}
			b.workloads = append(b.workloads, w)
		case *corev1.Service:
			b.services[v.Name] = v
		case *corev1.ConfigMap:
			b.configMaps[v.Name] = v
		case *corev1.Secret:
			b.secrets[v.Name] = v
		case *policyv1.PodDisruptionBudget:
			b.pdbs = append(b.pdbs, v)
		case *autoscalingv2.HorizontalPodAutoscaler:
			b.hpas = append(b.hpas, v)
		case *networkingv1.Ingress:
			b.ingresses = append(b.ingresses, v)
		}
	}
	return b
}

// imageName is an image reference without registry, path and tag:
// registry:5000/wschat/ws-user:dev is ws-user.
func imageName(image string) string {
	name := image[strings.LastIndex(image, "/")+1:]
	if i := strings.IndexAny(name, ":@"); i >= 0 {
		name = name[:i]
	}
	return name
}

func checkBuild(p *problems, dir string, objs []*object, apps map[string]*app, helm *helmNATS, readme string) {
	b := index(dir, objs)
	for _, w := range b.workloads {
		checkWorkload(p, b, w, apps, readme)
	}
	checkServices(p, b)
	checkPDBs(p, b)
	checkHPAs(p, b)
	checkIngresses(p, b)
	checkWiring(p, b, helm)
	// Every ws-user is reachable and managed: a Service, an Ingress route
	// to it, a PodDisruptionBudget and an autoscaler. (This also keeps the
	// checks above from passing on an empty build.)
	users := 0
	for _, w := range b.workloads {
		if w.app == nil || w.app.name != "ws-user" {
			continue
		}
		users++
		var svcs []string
		for _, s := range b.services {
			if w.selectedBy(s.Spec.Selector) {
				svcs = append(svcs, s.Name)
			}
		}
		if len(svcs) == 0 {
			p.add("%s: %s has no Service", dir, w.id)
		}
		routed := false
		for _, ing := range b.ingresses {
			for _, be := range backends(ing) {
				routed = routed || (be.Service != nil && slices.Contains(svcs, be.Service.Name))
			}
		}
		if !routed {
			p.add("%s: no Ingress routes to %s", dir, w.id)
		}
		if !slices.ContainsFunc(b.pdbs, func(d *policyv1.PodDisruptionBudget) bool { return selects(d.Spec.Selector, w) }) {
			p.add("%s: %s has no PodDisruptionBudget", dir, w.id)
		}
		if hpaFor(b, w) == nil {
			p.add("%s: %s has no HorizontalPodAutoscaler", dir, w.id)
		}
	}
	if users == 0 {
		p.add("%s: no workload runs ws-user", dir)
	}
}

// selects tells whether a label selector selects the workload's pods.
func selects(sel *metav1.LabelSelector, w *workload) bool {
	if sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && s.Matches(labels.Set(w.template.Labels))
}

func hpaFor(b *build, w *workload) *autoscalingv2.HorizontalPodAutoscaler {
	for _, h := range b.hpas {
		if h.Spec.ScaleTargetRef.Kind == w.kind && h.Spec.ScaleTargetRef.Name == w.name {
			return h
		}
	}
	return nil
}

func checkWorkload(p *problems, b *build, w *workload, apps map[string]*app, readme string) {
	if !selects(w.selector, w) {
		p.add("%s: its selector does not match its pod template's labels", w.id)
	}
	spec := &w.template.Spec
	for _, tsc := range spec.TopologySpreadConstraints {
		if !selects(tsc.LabelSelector, w) {
			p.add("%s: topologySpreadConstraints (%s) labelSelector does not match its own pods", w.id, tsc.TopologyKey)
		}
	}
	if len(spec.Containers) != 1 {
		p.add("%s: %d containers, want one", w.id, len(spec.Containers))
		return
	}
	c := &spec.Containers[0]
	a := apps[imageName(c.Image)]
	if a == nil {
		p.add("%s: image %s is neither ws-user nor ws-relayer", w.id, c.Image)
		return
	}
	w.app = a
	id := w.id + " container " + c.Name

	// The environment: every name a setting of the service, every
	// reference resolvable, and the values parse as the service parses them.
	vals := map[string]string{}
	setting := func(name, from string) {
		if _, ok := a.settings[name]; !ok {
			p.add("%s: %s %s is not a setting of %s", id, from, name, a.name)
		}
	}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm := b.configMaps[ef.ConfigMapRef.Name]
			if cm == nil {
				if ef.ConfigMapRef.Optional == nil || !*ef.ConfigMapRef.Optional {
					p.add("%s: envFrom names ConfigMap %s, which this build does not define", id, ef.ConfigMapRef.Name)
				}
				continue
			}
			for k, v := range cm.Data {
				setting(ef.Prefix+k, "ConfigMap "+cm.Name+" key")
				vals[ef.Prefix+k] = v
			}
		default:
			p.add("%s: envFrom other than a ConfigMap (its keys cannot be checked): name the variables in env", id)
		}
	}
	for _, e := range c.Env {
		setting(e.Name, "env")
		switch src := e.ValueFrom; {
		case src == nil:
			vals[e.Name] = e.Value
		case src.SecretKeyRef != nil:
			ref := src.SecretKeyRef
			if s := b.secrets[ref.Name]; s != nil {
				if _, ok := s.StringData[ref.Key]; !ok && s.Data[ref.Key] == nil {
					p.add("%s: env %s: Secret %s has no key %s", id, e.Name, ref.Name, ref.Key)
				}
			} else if !createsSecret(readme, ref.Name, ref.Key) {
				p.add("%s: env %s reads Secret %s (key %s), which neither the manifests define nor README.md creates (kubectl create secret generic %s --from-literal=%s=...)",
					id, e.Name, ref.Name, ref.Key, ref.Name, ref.Key)
			}
			if b.secretRefs[a.name] == nil {
				b.secretRefs[a.name] = map[string]string{}
			}
			b.secretRefs[a.name][e.Name] = ref.Name + "/" + ref.Key
			vals[e.Name] = "a-secret-of-32-bytes-0123456789ab"
		case src.FieldRef != nil:
			vals[e.Name] = w.name + "-0" // metadata.name and the like
		case src.ConfigMapKeyRef != nil:
			cm := b.configMaps[src.ConfigMapKeyRef.Name]
			if cm == nil {
				p.add("%s: env %s reads ConfigMap %s, which this build does not define", id, e.Name, src.ConfigMapKeyRef.Name)
				continue
			}
			v, ok := cm.Data[src.ConfigMapKeyRef.Key]
			if !ok {
				p.add("%s: env %s reads key %s, which ConfigMap %s does not have", id, e.Name, src.ConfigMapKeyRef.Key, cm.Name)
			}
			vals[e.Name] = v
		default:
			p.add("%s: env %s: a valueFrom this test does not follow", id, e.Name)
		}
	}
	cfg, err := a.load(func(k string) string { return vals[k] })
	if err != nil {
		p.add("%s: its settings do not parse as %s parses them: %v", id, a.name, err)
	}
	b.configs[w] = cfg

	// Ports and probes: the port the service listens on (PORT) is
	// declared, and the probes ask it for paths it serves.
	if _, ok := containerPort(c, intstr.FromInt32(int32(cfg.port))); !ok {
		p.add("%s: PORT %d (what %s listens on) is not a declared containerPort", id, cfg.port, a.name)
	}
	probes := []struct {
		kind string
		p    *corev1.Probe
		want string // the path this probe must ask
	}{
		// Ready: its dependencies answer (for ws-user, the relay tier).
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
		// Alive: the process answers. Not /readyz: a relay outage would
		// restart every ws-user, which helps nothing.
		{"livenessProbe", c.LivenessProbe, "/healthz"},
		{"startupProbe", c.StartupProbe, "/healthz"},
	}
	for _, pr := range probes {
		if pr.p == nil {
			if pr.kind != "startupProbe" {
				p.add("%s: no %s", id, pr.kind)
			}
			continue
		}
		g := pr.p.HTTPGet
		if g == nil {
			p.add("%s: %s is not an HTTP GET", id, pr.kind)
			continue
		}
		if !a.routes[g.Path] {
			p.add("%s: %s path %s is not served by %s (services/%s/app/app.go serves %v)", id, pr.kind, g.Path, a.name,
				strings.TrimPrefix(a.name, "ws-"), mapsKeys(a.routes))
		} else if g.Path != pr.want {
			p.add("%s: %s asks %s; it must ask %s", id, pr.kind, g.Path, pr.want)
		}
		if n, ok := containerPort(c, g.Port); !ok {
			p.add("%s: %s port %s is not a declared port of the container", id, pr.kind, g.Port.String())
		} else if n != cfg.port {
			p.add("%s: %s port %d is not the port %s listens on (PORT %d)", id, pr.kind, n, a.name, cfg.port)
		}
	}

	// Stopping: SIGKILL must not cut the drain short.
	grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if spec.TerminationGracePeriodSeconds != nil {
		grace = *spec.TerminationGracePeriodSeconds
	}
	var sleep int64
	if l := c.Lifecycle; l != nil && l.PreStop != nil {
		switch {
		case l.PreStop.Sleep != nil:
			sleep = l.PreStop.Sleep.Seconds
		default:
			p.add("%s: preStop must be a sleep action: the image has no shell and no sleep binary", id)
		}
	}
	if a.name == "ws-user" && sleep < 1 {
		p.add("%s: no preStop sleep: SIGTERM would come before the pod has left the Service's endpoints, and new connections would still reach it", id)
	}
	if time.Duration(grace)*time.Second <= time.Duration(sleep)*time.Second+cfg.shutdown {
		p.add("%s: terminationGracePeriodSeconds %d does not exceed the preStop sleep (%ds) plus SHUTDOWN_TIMEOUT (%s): the kubelet would SIGKILL a draining %s",
			id, grace, sleep, cfg.shutdown, a.name)
	}

	// Security: the image's user, nothing to escalate to, a read-only root.
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	csc := c.SecurityContext
	if csc == nil {
		csc = &corev1.SecurityContext{}
	}
	if !isTrue(first(csc.RunAsNonRoot, psc.RunAsNonRoot)) {
		p.add("%s: securityContext runAsNonRoot is not true", id)
	}
	if u := first(csc.RunAsUser, psc.RunAsUser); u == nil || *u != imageUID {
		p.add("%s: securityContext runAsUser is not %d (the image's user)", id, imageUID)
	}
	if !isTrue(csc.ReadOnlyRootFilesystem) {
		p.add("%s: securityContext readOnlyRootFilesystem is not true", id)
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		p.add("%s: securityContext allowPrivilegeEscalation is not false", id)
	}
	if csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") || len(csc.Capabilities.Add) > 0 {
		p.add("%s: securityContext capabilities must drop ALL and add none", id)
	}
	for _, r := range []struct {
		list corev1.ResourceList
		name corev1.ResourceName
		what string
	}{
		{c.Resources.Requests, corev1.ResourceCPU, "cpu request"},
		{c.Resources.Requests, corev1.ResourceMemory, "memory request"},
		{c.Resources.Limits, corev1.ResourceMemory, "memory limit"},
	} {
		if _, ok := r.list[r.name]; !ok {
			p.add("%s: resources: no %s", id, r.what)
		}
	}

	if a.name == "ws-relayer" {
		// One sequencer, its log on a claim that outlives the pod.
		if w.kind != "StatefulSet" || w.replicas == nil || *w.replicas != 1 {
			p.add("%s: ws-relayer must be a StatefulSet of exactly one replica (two would be two sequencers)", w.id)
		}
		mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
			return filepath.Clean(m.MountPath) == filepath.Clean(cfg.dataDir) && slices.Contains(w.claims, m.Name)
		})
		if !mounted {
			p.add("%s: DATA_DIR %s is not where a volumeClaimTemplate is mounted: the log would be lost with the pod (or unwritable, the root being read-only)", id, cfg.dataDir)
		}
	}
	if w.kind == "StatefulSet" {
		s := b.services[w.serviceName]
		switch {
		case s == nil:
			p.add("%s: serviceName %q names no Service of this build", w.id, w.serviceName)
		case s.Spec.ClusterIP != corev1.ClusterIPNone:
			p.add("%s: serviceName %s is not headless (clusterIP: None)", w.id, s.Name)
		case !w.selectedBy(s.Spec.Selector):
			p.add("%s: its serviceName %s does not select its pods", w.id, s.Name)
		}
	}
}

func first[T any](ps ...*T) *T {
	for _, p := range ps {
		if p != nil {
			return p
		}
	}
	return nil
}

func isTrue(b *bool) bool { return b != nil && *b }

func mapsKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// selected returns the workloads whose pods a Service selects.
func selected(b *build, s *corev1.Service) []*workload {
	var out []*workload
	for _, w := range b.workloads {
		if w.selectedBy(s.Spec.Selector) {
			out = append(out, w)
		}
	}
	return out
}

func checkServices(p *problems, b *build) {
	for _, s := range b.services {
		ws := selected(b, s)
		if len(ws) != 1 {
			p.add("%s: Service %s selects the pods of %d workloads, want exactly one (selector %v)", b.dir, s.Name, len(ws), s.Spec.Selector)
			continue
		}
		for _, sp := range s.Spec.Ports {
			target := sp.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(sp.Port)
			}
			if _, ok := ws[0].port(target); !ok {
				p.add("%s: Service %s port %s: targetPort %s is not a port of %s's containers", b.dir, s.Name, sp.Name, target.String(), ws[0].id)
			}
		}
	}
}

func checkPDBs(p *problems, b *build) {
	for _, d := range b.pdbs {
		var ws []*workload
		for _, w := range b.workloads {
			if selects(d.Spec.Selector, w) {
				ws = append(ws, w)
			}
		}
		if len(ws) != 1 {
			p.add("%s: PodDisruptionBudget %s selects the pods of %d workloads, want exactly one", b.dir, d.Name, len(ws))
			continue
		}
		// At the fewest replicas the workload runs, a drain may take one
		// pod and must leave one.
		least := int32(1)
		if h := hpaFor(b, ws[0]); h != nil && h.Spec.MinReplicas != nil {
			least = *h.Spec.MinReplicas
		} else if ws[0].replicas != nil {
			least = *ws[0].replicas
		}
		var allowed int
		var err error
		switch {
		case d.Spec.MaxUnavailable != nil:
			allowed, err = intstr.GetScaledValueFromIntOrPercent(d.Spec.MaxUnavailable, int(least), true)
		case d.Spec.MinAvailable != nil:
			var minAvail int
			minAvail, err = intstr.GetScaledValueFromIntOrPercent(d.Spec.MinAvailable, int(least), true)
			allowed = int(least) - minAvail
		}
		if err != nil {
			p.add("%s: PodDisruptionBudget %s: %v", b.dir, d.Name, err)
			continue
		}
		if allowed < 1 || int(least)-allowed < 1 {
			p.add("%s: PodDisruptionBudget %s at %d replicas of %s allows %d disruptions: a drain must be able to take one pod and leave one",
				b.dir, d.Name, least, ws[0].id, allowed)
		}
	}
}

func checkHPAs(p *problems, b *build) {
	for _, h := range b.hpas {
		ref := h.Spec.ScaleTargetRef
		i := slices.IndexFunc(b.workloads, func(w *workload) bool { return w.kind == ref.Kind && w.name == ref.Name })
		if i < 0 || ref.APIVersion != "apps/v1" {
			p.add("%s: HorizontalPodAutoscaler %s scales %s %s/%s, which this build does not define", b.dir, h.Name, ref.APIVersion, ref.Kind, ref.Name)
			continue
		}
		w := b.workloads[i]
		if w.replicas != nil {
			p.add("%s: %s sets replicas although HorizontalPodAutoscaler %s owns them: every apply would reset the count", b.dir, w.id, h.Name)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 {
			p.add("%s: HorizontalPodAutoscaler %s: minReplicas below 2 leaves a single pod, whose clients all drop when it goes", b.dir, h.Name)
		}
		for _, m := range h.Spec.Metrics {
			if m.Resource == nil {
				continue
			}
			for _, c := range w.template.Spec.Containers {
				if _, ok := c.Resources.Requests[m.Resource.Name]; !ok {
					p.add("%s: HorizontalPodAutoscaler %s scales on %s, which container %s of %s does not request", b.dir, h.Name, m.Resource.Name, c.Name, w.id)
				}
			}
		}
	}
}

func backends(ing *networkingv1.Ingress) []networkingv1.IngressBackend {
	var out []networkingv1.IngressBackend
	if ing.Spec.DefaultBackend != nil {
		out = append(out, *ing.Spec.DefaultBackend)
	}
	for _, r := range ing.Spec.Rules {
		if r.HTTP != nil {
			for _, path := range r.HTTP.Paths {
				out = append(out, path.Backend)
			}
		}
	}
	return out
}

// WebSockets are long-lived and may be idle: ingress-nginx's 60 s default
// proxy timeouts would cut them.
var ingressTimeouts = []string{
	"nginx.ingress.kubernetes.io/proxy-read-timeout",
	"nginx.ingress.kubernetes.io/proxy-send-timeout",
}

func checkIngresses(p *problems, b *build) {
	for _, ing := range b.ingresses {
		if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx" {
			p.add("%s: Ingress %s: ingressClassName is not nginx (the annotations are ingress-nginx's)", b.dir, ing.Name)
		}
		for _, a := range ingressTimeouts {
			if n, err := strconv.Atoi(ing.Annotations[a]); err != nil || n < 3600 {
				p.add("%s: Ingress %s: %s is %q, want at least 3600 (seconds) for idle WebSockets", b.dir, ing.Name, a, ing.Annotations[a])
			}
		}
		for _, be := range backends(ing) {
			if be.Service == nil {
				p.add("%s: Ingress %s: a backend that is not a Service", b.dir, ing.Name)
				continue
			}
			s := b.services[be.Service.Name]
			if s == nil {
				p.add("%s: Ingress %s: backend Service %s is not defined in this build", b.dir, ing.Name, be.Service.Name)
				continue
			}
			if !slices.ContainsFunc(s.Spec.Ports, func(sp corev1.ServicePort) bool {
				return (be.Service.Port.Name != "" && sp.Name == be.Service.Port.Name) || (be.Service.Port.Number != 0 && sp.Port == be.Service.Port.Number)
			}) {
				p.add("%s: Ingress %s: backend port %q/%d is not a port of Service %s", b.dir, ing.Name, be.Service.Port.Name, be.Service.Port.Number, s.Name)
			}
		}
	}
}

// checkWiring follows each ws-user's relay tier to what serves it.
func checkWiring(p *problems, b *build, helm *helmNATS) {
	for _, w := range b.workloads {
		if w.app == nil || w.app.name != "ws-user" {
			continue
		}
		cfg := b.configs[w]
		mode := cfg.bus
		if mode == "" && cfg.relayerURL != "" {
			mode = "relayer"
		}
		switch mode {
		case "relayer":
			checkRelayerURL(p, b, w, cfg.relayerURL)
		case "nats":
			checkNATS(p, b, w, cfg, helm)
		default:
			p.add("%s: %s runs ws-user with BUS=%q: each pod would hold its own rooms", b.dir, w.id, mode)
		}
	}
}

func checkRelayerURL(p *problems, b *build, w *workload, raw string) {
	u, err := url.Parse(raw)
	if err != nil {
		p.add("%s: %s: RELAYER_URL %q: %v", b.dir, w.id, raw, err)
		return
	}
	s := b.services[u.Hostname()]
	if s == nil {
		p.add("%s: %s: RELAYER_URL %s: the host names no Service of this build", b.dir, w.id, raw)
		return
	}
	var relayer *workload
	if ws := selected(b, s); len(ws) == 1 && ws[0].app != nil && ws[0].app.name == "ws-relayer" {
		relayer = ws[0]
	} else {
		p.add("%s: %s: RELAYER_URL %s: Service %s does not select ws-relayer's pods", b.dir, w.id, raw, s.Name)
		return
	}
	i := slices.IndexFunc(s.Spec.Ports, func(sp corev1.ServicePort) bool { return strconv.Itoa(int(sp.Port)) == u.Port() })
	if i < 0 {
		p.add("%s: %s: RELAYER_URL %s: port %s is not a port of Service %s", b.dir, w.id, raw, u.Port(), s.Name)
		return
	}
	// A headless Service resolves to the pod: the URL's port must be
	// the relayer's own.
	if s.Spec.ClusterIP == corev1.ClusterIPNone && u.Port() != strconv.Itoa(b.configs[relayer].port) {
		p.add("%s: %s: RELAYER_URL %s: Service %s is headless, so the port must be the relayer's PORT %d", b.dir, w.id, raw, s.Name, b.configs[relayer].port)
	}
	if got, want := b.secretRefs["ws-user"]["RELAY_SECRET"], b.secretRefs["ws-relayer"]["RELAY_SECRET"]; got != want {
		p.add("%s: ws-user reads RELAY_SECRET from Secret %q, ws-relayer from %q: the link needs the same secret", b.dir, got, want)
	}
}

func checkNATS(p *problems, b *build, w *workload, cfg appConfig, helm *helmNATS) {
	if helm.service == "" {
		return // reported by loadHelm
	}
	for _, raw := range cfg.natsURL {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			p.add("%s: %s: NATS_URL %q: %v", b.dir, w.id, raw, err)
			continue
		}
		if u.Hostname() != helm.service || u.Port() != strconv.Itoa(helm.port) {
			p.add("%s: %s: NATS_URL %s is not the NATS Helm release's client Service %s:%d (README.md's helm install, %s)",
				b.dir, w.id, raw, helm.service, helm.port, helm.valuesFile)
		}
	}
	v := func(path ...string) any {
		x, _ := lookup(helm.values, path...)
		return x
	}
	vf := helm.valuesFile
	if v("config", "cluster", "enabled") != true {
		p.add("%s: config.cluster.enabled is not true", vf)
	}
	if n, _ := v("config", "cluster", "replicas").(float64); int(n) < cfg.natsReplicas {
		p.add("%s: config.cluster.replicas %v is fewer than ws-user's NATS_REPLICAS %d (%s): the stream could not be created", vf, v("config", "cluster", "replicas"), cfg.natsReplicas, w.id)
	}
	if v("config", "jetstream", "enabled") != true {
		p.add("%s: config.jetstream.enabled is not true", vf)
	}
	if v("config", "jetstream", "fileStore", "enabled") == false {
		p.add("%s: config.jetstream.fileStore.enabled is false: the stream is file-stored", vf)
	}
	size, err := resource.ParseQuantity(fmt.Sprint(v("config", "jetstream", "fileStore", "pvc", "size")))
	if err != nil || size.Value() < cfg.natsMaxBytes {
		p.add("%s: config.jetstream.fileStore.pvc.size %v does not hold ws-user's NATS_MAX_BYTES %d (each server keeps a full copy of the stream)", vf, v("config", "jetstream", "fileStore", "pvc", "size"), cfg.natsMaxBytes)
	}
	// The presence bucket is a memory-stored KV (services/user/internal/natsbus:
	// jetstream.MemoryStorage); the chart's default max_memory_store is 0.
	mem, err := resource.ParseQuantity(fmt.Sprint(v("config", "jetstream", "memoryStore", "maxSize")))
	if v("config", "jetstream", "memoryStore", "enabled") != true || err != nil || mem.Value() <= 0 {
		p.add("%s: config.jetstream.memoryStore must be enabled with a maxSize: ws-user's presence bucket is kept in memory", vf)
	}
}

// createsSecret reports whether text holds a command (its lines joined
// where they end in a backslash) "kubectl create secret generic name …"
// with --from-literal=key=.
func createsSecret(text, name, key string) bool {
	for _, line := range strings.Split(strings.ReplaceAll(text, "\\\n", " "), "\n") {
		if strings.Contains(line, "kubectl create secret generic "+name+" ") && strings.Contains(line, " --from-literal="+key+"=") {
			return true
		}
	}
	return false
}
