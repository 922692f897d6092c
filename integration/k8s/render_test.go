package k8s

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	kyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// scheme holds the only API types the manifests may use; any other kind
// fails to decode.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme,
		autoscalingv2.AddToScheme, networkingv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// strict decodes YAML or JSON like the API server with strict field
// validation: case-sensitive field names, unknown and duplicate fields
// are errors.
var strict = kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
	kjson.SerializerOptions{Yaml: true, Strict: true})

// object is one decoded manifest and the file it came from.
type object struct {
	src string
	obj runtime.Object
}

func (o *object) kind() string { return o.obj.GetObjectKind().GroupVersionKind().Kind }

func (o *object) name() string {
	if m, ok := o.obj.(interface{ GetName() string }); ok {
		return m.GetName()
	}
	return ""
}

func (o *object) String() string { return o.kind() + "/" + o.name() + " (" + o.src + ")" }

// kustomization is the part of kustomize's Kustomization these files may
// use. Decoding is strict, so a field this package does not render (images,
// namePrefix, configMapGenerator, ...) fails instead of being ignored.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Patches    []struct {
		Path   string `json:"path,omitempty"`
		Patch  string `json:"patch,omitempty"`
		Target *struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"target,omitempty"`
	} `json:"patches"`
}

// renderer renders kustomizations, recording every file it reads.
type renderer struct {
	used map[string]bool
}

// render returns the objects the kustomization in dir makes.
func (r *renderer) render(dir string) ([]*object, error) {
	kfile := filepath.Join(dir, "kustomization.yaml")
	b, err := os.ReadFile(kfile)
	if err != nil {
		return nil, err
	}
	r.used[filepath.Clean(kfile)] = true
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return nil, fmt.Errorf("%s: %w (this test renders resources and patches only)", kfile, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		return nil, fmt.Errorf("%s: apiVersion/kind %s/%s, want kustomize.config.k8s.io/v1beta1/Kustomization", kfile, k.APIVersion, k.Kind)
	}
	var objs []*object
	for _, res := range k.Resources {
		p := filepath.Join(dir, res)
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%s: resource %s: %w", kfile, res, err)
		}
		var got []*object
		if st.IsDir() {
			got, err = r.render(p)
		} else {
			got, err = r.decodeFile(p)
		}
		if err != nil {
			return nil, err
		}
		objs = append(objs, got...)
	}
	for i, p := range k.Patches {
		src := fmt.Sprintf("%s: patches[%d]", kfile, i)
		data := []byte(p.Patch)
		if p.Path != "" {
			file := filepath.Join(dir, p.Path)
			if data, err = os.ReadFile(file); err != nil {
				return nil, fmt.Errorf("%s: %w", src, err)
			}
			r.used[filepath.Clean(file)] = true
			src = file
		}
		if err := applyPatch(objs, src, data, p.Target); err != nil {
			return nil, err
		}
	}
	seen := map[string]string{}
	for _, o := range objs {
		key := o.kind() + "/" + o.name()
		if prev, ok := seen[key]; ok {
			return nil, fmt.Errorf("%s: %s is defined twice (%s and %s)", dir, key, prev, o.src)
		}
		seen[key] = o.src
	}
	return objs, nil
}

// applyPatch applies a strategic-merge patch to the object its target (or
// its own kind and name) names, and decodes the result strictly again.
func applyPatch(objs []*object, src string, data []byte, target *struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}) error {
	patch, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	kind, name := "", ""
	if target != nil {
		kind, name = target.Kind, target.Name
	} else {
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(patch, &head); err != nil {
			return fmt.Errorf("%s: a strategic-merge patch (a list of operations is not supported here): %w", src, err)
		}
		kind, name = head.Kind, head.Metadata.Name
	}
	i := slices.IndexFunc(objs, func(o *object) bool { return o.kind() == kind && o.name() == name })
	if i < 0 {
		return fmt.Errorf("%s: patches %s/%s, which no resource defines", src, kind, name)
	}
	orig, err := json.Marshal(objs[i].obj)
	if err != nil {
		return err
	}
	merged, err := strategicpatch.StrategicMergePatch(orig, patch, objs[i].obj)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	obj, _, err := strict.Decode(merged, nil, nil)
	if err != nil {
		return fmt.Errorf("%s: patched %s/%s: %w", src, kind, name, err)
	}
	objs[i] = &object{src: objs[i].src + " patched by " + src, obj: obj}
	return nil
}

func (r *renderer) decodeFile(file string) ([]*object, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	r.used[filepath.Clean(file)] = true
	return decodeAll(file, b)
}

// decodeAll decodes every document of a YAML stream strictly.
func decodeAll(src string, b []byte) ([]*object, error) {
	rd := kyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out []*object
	for n := 1; ; n++ {
		doc, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		if j, err := yaml.YAMLToJSON(doc); err == nil && strings.TrimSpace(string(j)) == "null" {
			continue // only comments
		}
		obj, _, err := strict.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", src, n, err)
		}
		out = append(out, &object{src: src, obj: obj})
	}
}
