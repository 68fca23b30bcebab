package deploy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
)

// object is one decoded manifest document.
type object struct {
	file string
	kind string
	meta metav1.ObjectMeta
	obj  any
}

func (o object) String() string {
	return fmt.Sprintf("%s %s/%s (%s)", o.kind, o.meta.Namespace, o.meta.Name, o.file)
}

// kinds maps apiVersion/kind to a new typed object. Only the kinds the
// manifests use are known: anything else is an error, not a silent pass.
var kinds = map[string]func() any{
	"v1/Namespace":                  func() any { return &corev1.Namespace{} },
	"v1/Secret":                     func() any { return &corev1.Secret{} },
	"v1/ConfigMap":                  func() any { return &corev1.ConfigMap{} },
	"v1/Service":                    func() any { return &corev1.Service{} },
	"v1/ServiceAccount":             func() any { return &corev1.ServiceAccount{} },
	"apps/v1/Deployment":            func() any { return &appsv1.Deployment{} },
	"apps/v1/StatefulSet":           func() any { return &appsv1.StatefulSet{} },
	"batch/v1/Job":                  func() any { return &batchv1.Job{} },
	"policy/v1/PodDisruptionBudget": func() any { return &policyv1.PodDisruptionBudget{} },
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// decodeManifests strictly decodes every document of a manifest file into
// its typed Kubernetes API object: unknown or duplicate fields, wrong types
// and unknown kinds are errors (what kubectl's server-side field validation
// would reject), without needing schemas from the network.
func decodeManifests(file string, b []byte) ([]object, error) {
	var out []object
	for i, doc := range docSep.Split(string(b), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i+1, err)
		}
		mk, ok := kinds[tm.APIVersion+"/"+tm.Kind]
		if !ok {
			return nil, fmt.Errorf("%s: document %d: unknown apiVersion/kind %q/%q", file, i+1, tm.APIVersion, tm.Kind)
		}
		obj := mk()
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("%s: %s document %d: %w", file, tm.Kind, i+1, err)
		}
		m, ok := obj.(metav1.Object)
		if !ok {
			return nil, fmt.Errorf("%s: %s has no object metadata", file, tm.Kind)
		}
		out = append(out, object{file: file, kind: tm.Kind, obj: obj, meta: metav1.ObjectMeta{Name: m.GetName(), Namespace: m.GetNamespace(), Labels: m.GetLabels()}})
	}
	return out, nil
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// kustomization is the part of kustomize's Kustomization the manifests use.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images"`
}

// loadKubernetes decodes kustomization.yaml and every resource it lists.
func loadKubernetes(t *testing.T) (kustomization, []object) {
	t.Helper()
	dir := filepath.Join(deployDir(t), "kubernetes")
	var k kustomization
	if err := yaml.UnmarshalStrict(read(t, filepath.Join(dir, "kustomization.yaml")), &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	var all []object
	for _, r := range k.Resources {
		objs, err := decodeManifests(r, read(t, filepath.Join(dir, r)))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, objs...)
	}
	return k, all
}

// podTemplate returns the pod template and replica count of a workload.
func podTemplate(o object) (*corev1.PodTemplateSpec, *metav1.LabelSelector, int32, bool) {
	one := int32(1)
	switch w := o.obj.(type) {
	case *appsv1.Deployment:
		if w.Spec.Replicas != nil {
			one = *w.Spec.Replicas
		}
		return &w.Spec.Template, w.Spec.Selector, one, true
	case *appsv1.StatefulSet:
		if w.Spec.Replicas != nil {
			one = *w.Spec.Replicas
		}
		return &w.Spec.Template, w.Spec.Selector, one, true
	case *batchv1.Job:
		return &w.Spec.Template, w.Spec.Selector, 1, true
	}
	return nil, nil, 0, false
}

// checkKubernetes checks the decoded objects against each other and against
// the rules these manifests promise (restricted pod security, requests, pinned
// images, probes that hit real ports, references that resolve).
func checkKubernetes(objs []object) errs {
	var e errs
	byKind := map[string]map[string]object{} // kind -> ns/name
	for _, o := range objs {
		if byKind[o.kind] == nil {
			byKind[o.kind] = map[string]object{}
		}
		key := o.meta.Namespace + "/" + o.meta.Name
		if _, dup := byKind[o.kind][key]; dup {
			e.add("%s is defined twice", o)
		}
		byKind[o.kind][key] = o
		for _, msg := range validation.IsDNS1123Subdomain(o.meta.Name) {
			e.add("%s: name: %s", o, msg)
		}
		if o.kind != "Namespace" {
			if o.meta.Namespace == "" {
				e.add("%s: no namespace (it would land in whatever namespace kubectl points at)", o)
			} else if !defines(objs, "Namespace", o.meta.Namespace) {
				e.add("%s: namespace %q is not defined by these manifests", o, o.meta.Namespace)
			}
		}
	}
	has := func(kind, ns, name string) bool { _, ok := byKind[kind][ns+"/"+name]; return ok }
	secretKey := func(ns, name, key string) bool {
		o, ok := byKind["Secret"][ns+"/"+name]
		if !ok {
			return false
		}
		s := o.obj.(*corev1.Secret)
		_, a := s.StringData[key]
		_, b := s.Data[key]
		return a || b
	}

	type workload struct {
		o        object
		labels   labels.Set
		ports    map[string]int32 // name -> port
		numbers  map[int32]bool
		replicas int32
	}
	var workloads []workload
	for _, o := range objs {
		tpl, sel, replicas, ok := podTemplate(o)
		if !ok {
			continue
		}
		w := workload{o: o, labels: tpl.Labels, ports: map[string]int32{}, numbers: map[int32]bool{}, replicas: replicas}
		if sel != nil {
			s, err := metav1.LabelSelectorAsSelector(sel)
			if err != nil {
				e.add("%s: selector: %v", o, err)
			} else if !s.Matches(labels.Set(tpl.Labels)) {
				e.add("%s: selector %v does not match the pod template's labels %v", o, s, tpl.Labels)
			}
		} else if o.kind != "Job" {
			e.add("%s: no selector", o)
		}
		ns := o.meta.Namespace
		spec := tpl.Spec
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
			e.add("%s: pod securityContext.runAsNonRoot must be true", o)
		}
		if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			e.add("%s: pod securityContext.seccompProfile must be RuntimeDefault", o)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			e.add("%s: automountServiceAccountToken must be false (nothing here talks to the API server)", o)
		}
		if spec.ServiceAccountName != "" && !has("ServiceAccount", ns, spec.ServiceAccountName) {
			e.add("%s: serviceAccountName %q is not defined", o, spec.ServiceAccountName)
		}
		vols := map[string]corev1.Volume{}
		for _, v := range spec.Volumes {
			vols[v.Name] = v
			switch {
			case v.ConfigMap != nil && !has("ConfigMap", ns, v.ConfigMap.Name):
				e.add("%s: volume %s: ConfigMap %q is not defined", o, v.Name, v.ConfigMap.Name)
			case v.Secret != nil && !has("Secret", ns, v.Secret.SecretName):
				e.add("%s: volume %s: Secret %q is not defined", o, v.Name, v.Secret.SecretName)
			case v.Secret != nil:
				for _, it := range v.Secret.Items {
					if !secretKey(ns, v.Secret.SecretName, it.Key) {
						e.add("%s: volume %s: Secret %s has no key %q", o, v.Name, v.Secret.SecretName, it.Key)
					}
				}
			}
		}
		claims := map[string]bool{}
		if ss, ok := o.obj.(*appsv1.StatefulSet); ok {
			for _, c := range ss.Spec.VolumeClaimTemplates {
				claims[c.Name] = true
			}
		}
		all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
		for _, c := range all {
			where := fmt.Sprintf("%s: container %s", o, c.Name)
			img := c.Image
			if i := strings.LastIndex(img, "/"); i >= 0 {
				img = img[i+1:]
			}
			if !strings.Contains(img, ":") && !strings.Contains(c.Image, "@sha256:") {
				e.add("%s: image %q has no tag", where, c.Image)
			} else if strings.HasSuffix(c.Image, ":latest") {
				e.add("%s: image %q uses :latest", where, c.Image)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
				e.add("%s: resources.requests must set cpu and memory", where)
			}
			if c.Resources.Limits.Memory().IsZero() {
				e.add("%s: resources.limits.memory must be set", where)
			}
			sc := c.SecurityContext
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				e.add("%s: securityContext.allowPrivilegeEscalation must be false", where)
			}
			if sc == nil || sc.Capabilities == nil || !containsCap(sc.Capabilities.Drop, "ALL") {
				e.add("%s: securityContext.capabilities.drop must include ALL", where)
			}
			if sc != nil && sc.RunAsUser != nil && *sc.RunAsUser == 0 {
				e.add("%s: runAsUser 0", where)
			}
			for _, p := range c.Ports {
				if p.Name != "" {
					for _, msg := range validation.IsValidPortName(p.Name) {
						e.add("%s: port name %q: %s", where, p.Name, msg)
					}
					w.ports[p.Name] = p.ContainerPort
				}
				w.numbers[p.ContainerPort] = true
			}
			for _, m := range c.VolumeMounts {
				if _, ok := vols[m.Name]; !ok && !claims[m.Name] {
					e.add("%s: volumeMount %q names no volume", where, m.Name)
				}
			}
			for _, ev := range c.Env {
				if ev.ValueFrom == nil {
					continue
				}
				if r := ev.ValueFrom.SecretKeyRef; r != nil && !secretKey(ns, r.Name, r.Key) {
					e.add("%s: env %s: Secret %s key %q is not defined", where, ev.Name, r.Name, r.Key)
				}
				if r := ev.ValueFrom.ConfigMapKeyRef; r != nil && !has("ConfigMap", ns, r.Name) {
					e.add("%s: env %s: ConfigMap %q is not defined", where, ev.Name, r.Name)
				}
			}
			for _, ef := range c.EnvFrom {
				if ef.SecretRef != nil && !has("Secret", ns, ef.SecretRef.Name) {
					e.add("%s: envFrom Secret %q is not defined", where, ef.SecretRef.Name)
				}
				if ef.ConfigMapRef != nil && !has("ConfigMap", ns, ef.ConfigMapRef.Name) {
					e.add("%s: envFrom ConfigMap %q is not defined", where, ef.ConfigMapRef.Name)
				}
			}
		}
		// Probes must point at ports the containers open.
		for _, c := range spec.Containers {
			for kind, p := range map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
				if p == nil {
					continue
				}
				var port intstr.IntOrString
				switch {
				case p.HTTPGet != nil:
					port = p.HTTPGet.Port
				case p.TCPSocket != nil:
					port = p.TCPSocket.Port
				case p.GRPC != nil:
					port = intstr.FromInt32(p.GRPC.Port)
				default:
					continue
				}
				if port.Type == intstr.String {
					if _, ok := w.ports[port.StrVal]; !ok {
						e.add("%s: container %s: %s port %q is not a named container port", o, c.Name, kind, port.StrVal)
					}
				} else if !w.numbers[port.IntVal] {
					e.add("%s: container %s: %s port %d is not a container port", o, c.Name, kind, port.IntVal)
				}
			}
		}
		workloads = append(workloads, w)
	}

	for _, o := range objs {
		switch v := o.obj.(type) {
		case *corev1.Service:
			var target *workload
			for i := range workloads {
				w := &workloads[i]
				if w.o.meta.Namespace == o.meta.Namespace && len(v.Spec.Selector) > 0 && labels.SelectorFromSet(v.Spec.Selector).Matches(w.labels) {
					target = w
				}
			}
			if target == nil {
				e.add("%s: selector %v matches no workload's pods", o, v.Spec.Selector)
				continue
			}
			for _, p := range v.Spec.Ports {
				tp := p.TargetPort
				if tp.Type == intstr.String {
					if _, ok := target.ports[tp.StrVal]; !ok {
						e.add("%s: port %s: targetPort %q is not a named port of %s", o, p.Name, tp.StrVal, target.o)
					}
				} else if tp.IntVal != 0 && !target.numbers[tp.IntVal] {
					e.add("%s: port %s: targetPort %d is not a port of %s", o, p.Name, tp.IntVal, target.o)
				}
			}
		case *policyv1.PodDisruptionBudget:
			s, err := metav1.LabelSelectorAsSelector(v.Spec.Selector)
			if err != nil {
				e.add("%s: selector: %v", o, err)
				continue
			}
			matched := false
			for _, w := range workloads {
				if w.o.meta.Namespace != o.meta.Namespace || !s.Matches(w.labels) {
					continue
				}
				matched = true
				if v.Spec.MinAvailable != nil && v.Spec.MinAvailable.Type == intstr.Int && v.Spec.MinAvailable.IntVal >= w.replicas {
					e.add("%s: minAvailable %d with %d replicas of %s blocks every node drain", o, v.Spec.MinAvailable.IntVal, w.replicas, w.o)
				}
			}
			if !matched {
				e.add("%s: selector matches no workload's pods", o)
			}
		}
	}
	return e
}

func defines(objs []object, kind, name string) bool {
	for _, o := range objs {
		if o.kind == kind && o.meta.Name == name {
			return true
		}
	}
	return false
}

func containsCap(list []corev1.Capability, c corev1.Capability) bool {
	for _, x := range list {
		if x == c {
			return true
		}
	}
	return false
}

// gatewayDeployment finds the aa-gateway Deployment.
func gatewayDeployment(t *testing.T, objs []object) *appsv1.Deployment {
	t.Helper()
	for _, o := range objs {
		if d, ok := o.obj.(*appsv1.Deployment); ok && o.meta.Name == "aa-gateway" {
			return d
		}
	}
	t.Fatal("no Deployment aa-gateway")
	return nil
}

// secretValue returns a Secret's value by key.
func secretValue(objs []object, ns, name, key string) (string, bool) {
	for _, o := range objs {
		if s, ok := o.obj.(*corev1.Secret); ok && o.meta.Namespace == ns && o.meta.Name == name {
			if v, ok := s.StringData[key]; ok {
				return v, true
			}
			if v, ok := s.Data[key]; ok {
				return string(v), true
			}
		}
	}
	return "", false
}

// TestKubernetesManifests decodes every manifest strictly into its typed
// API object and checks the set as a whole.
func TestKubernetesManifests(t *testing.T) {
	dir := filepath.Join(deployDir(t), "kubernetes")
	k, objs := loadKubernetes(t)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: apiVersion/kind %s/%s", k.APIVersion, k.Kind)
	}
	listed := map[string]bool{}
	for _, r := range k.Resources {
		listed[r] = true
	}
	for _, p := range files(t, dir, ".yaml") {
		if b := filepath.Base(p); b != "kustomization.yaml" && !listed[b] {
			t.Errorf("%s is not listed in kustomization.yaml resources", b)
		}
	}
	images := map[string]bool{}
	for _, o := range objs {
		if tpl, _, _, ok := podTemplate(o); ok {
			for _, c := range append(append([]corev1.Container{}, tpl.Spec.InitContainers...), tpl.Spec.Containers...) {
				name, _, _ := strings.Cut(c.Image, ":")
				images[name] = true
			}
		}
	}
	for _, im := range k.Images {
		if !images[im.Name] {
			t.Errorf("kustomization.yaml: images: %s is used by no container", im.Name)
		}
	}
	checkKubernetes(objs).report(t, "deploy/kubernetes")
}

// TestKubernetesGateway checks the gateway Deployment: replicas, probes on
// the health endpoints, the configuration the code accepts, the policies
// and secrets key where the settings point, and a placeholder key that
// fails closed.
func TestKubernetesGateway(t *testing.T) {
	_, objs := loadKubernetes(t)
	d := gatewayDeployment(t, objs)
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("aa-gateway: want 2 or more replicas")
	}
	c := d.Spec.Template.Spec.Containers[0]
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("aa-gateway: readinessProbe must GET /readyz (ready only with a policy loaded and the store answering)")
	}
	if c.LivenessProbe == nil {
		t.Errorf("aa-gateway: no livenessProbe")
	}
	if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path == "/readyz" {
		t.Errorf("aa-gateway: livenessProbe on /readyz would restart every replica when the store is down")
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("aa-gateway: readOnlyRootFilesystem must be true")
	}

	// The environment, with references resolved as the kubelet would.
	ns := d.Namespace
	env := map[string]string{}
	for _, ev := range c.Env {
		switch {
		case ev.ValueFrom == nil:
			env[ev.Name] = ev.Value
		case ev.ValueFrom.SecretKeyRef != nil:
			v, ok := secretValue(objs, ns, ev.ValueFrom.SecretKeyRef.Name, ev.ValueFrom.SecretKeyRef.Key)
			if !ok {
				t.Errorf("aa-gateway: env %s: secret value not found", ev.Name)
			}
			env[ev.Name] = v
		case ev.ValueFrom.FieldRef != nil:
			env[ev.Name] = "aa-gateway-5d9c7b7f4-x2x9q"
		default:
			t.Errorf("aa-gateway: env %s: unsupported valueFrom", ev.Name)
		}
	}
	checkGatewayEnv(env).report(t, "aa-gateway Deployment")
	if env["AA_COUNTERS"] == "" {
		t.Errorf("aa-gateway: AA_COUNTERS unset: replicas would keep separate budget counters")
	}
	if !strings.HasPrefix(env["AA_STORE"], "postgres://") {
		t.Errorf("aa-gateway: AA_STORE %q: replicas must share PostgreSQL", env["AA_STORE"])
	}

	mountOf := func(p string) (corev1.VolumeMount, bool) {
		for _, m := range c.VolumeMounts {
			if strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") || p == m.MountPath {
				return m, true
			}
		}
		return corev1.VolumeMount{}, false
	}
	volume := func(name string) corev1.Volume {
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name == name {
				return v
			}
		}
		return corev1.Volume{}
	}
	// AA_POLICY is the policies ConfigMap, which compiles.
	if m, ok := mountOf(env["AA_POLICY"]); !ok || volume(m.Name).ConfigMap == nil {
		t.Errorf("aa-gateway: AA_POLICY %s is not a mounted ConfigMap", env["AA_POLICY"])
	} else {
		cm := configMap(t, objs, ns, volume(m.Name).ConfigMap.Name)
		dir := t.TempDir()
		for name, body := range cm.Data {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		docs, err := policy.LoadPath(dir)
		if err != nil {
			t.Errorf("policies ConfigMap %s does not load: %v", cm.Name, err)
		} else if _, err := policy.Compile(docs, policy.Version(docs)); err != nil {
			t.Errorf("policies ConfigMap %s does not compile: %v", cm.Name, err)
		}
	}
	// AA_SECRETS_KEY_FILE is a key of a mounted Secret, shared by all replicas;
	// the committed placeholder must not parse, so the gateway refuses to start.
	keyFile := env["AA_SECRETS_KEY_FILE"]
	m, ok := mountOf(keyFile)
	if !ok || volume(m.Name).Secret == nil {
		t.Fatalf("aa-gateway: AA_SECRETS_KEY_FILE %s is not in a mounted Secret", keyFile)
	}
	v := volume(m.Name).Secret
	rel := strings.TrimPrefix(keyFile, strings.TrimSuffix(m.MountPath, "/")+"/")
	key := ""
	for _, it := range v.Items {
		if it.Path == rel {
			key = it.Key
		}
	}
	if key == "" {
		t.Fatalf("aa-gateway: Secret volume %s has no item at %s", m.Name, rel)
	}
	placeholder, _ := secretValue(objs, ns, v.SecretName, key)
	if _, err := secretbox.ParseKey(placeholder); err == nil {
		t.Errorf("Secret %s key %s holds a usable key: committed manifests must carry a placeholder that fails closed", v.SecretName, key)
	}

	// AA_BOOTSTRAP_ADMIN_KEY_FILE is a key of a mounted Secret too (optional,
	// so it may be deleted once named admin keys exist); the committed
	// placeholder is not an API key, so a first start fails closed.
	adminFile := env["AA_BOOTSTRAP_ADMIN_KEY_FILE"]
	am, ok := mountOf(adminFile)
	if !ok || volume(am.Name).Secret == nil {
		t.Fatalf("aa-gateway: AA_BOOTSTRAP_ADMIN_KEY_FILE %q is not in a mounted Secret", adminFile)
	}
	av := volume(am.Name).Secret
	arel := strings.TrimPrefix(adminFile, strings.TrimSuffix(am.MountPath, "/")+"/")
	akey := ""
	for _, it := range av.Items {
		if it.Path == arel {
			akey = it.Key
		}
	}
	if akey == "" {
		t.Fatalf("aa-gateway: Secret volume %s has no item at %s", am.Name, arel)
	}
	if av.Optional == nil || !*av.Optional {
		t.Errorf("aa-gateway: the admin key Secret volume %s must be optional: the Secret is deleted after bootstrap", am.Name)
	}
	adminPlaceholder, found := secretValue(objs, ns, av.SecretName, akey)
	if !found {
		t.Fatalf("Secret %s key %s not in the manifests", av.SecretName, akey)
	}
	if _, err := auth.ParseKey(adminPlaceholder); err == nil {
		t.Errorf("Secret %s key %s holds a usable API key: committed manifests must carry a placeholder that fails closed", av.SecretName, akey)
	}
	if am.Name == m.Name {
		t.Errorf("aa-gateway: the admin key must be its own Secret volume, not %s", m.Name)
	}
}

// configMap finds a ConfigMap.
func configMap(t *testing.T, objs []object, ns, name string) *corev1.ConfigMap {
	t.Helper()
	for _, o := range objs {
		if c, ok := o.obj.(*corev1.ConfigMap); ok && o.meta.Namespace == ns && o.meta.Name == name {
			return c
		}
	}
	t.Fatalf("ConfigMap %s/%s not found", ns, name)
	return nil
}

// TestKubernetesAgent checks the example agent's environment against the SDK
// and its sidecar bootstrap against Envoy's schema.
func TestKubernetesAgent(t *testing.T) {
	_, objs := loadKubernetes(t)
	known := sourceEnv(t, "examples/agent", "sdkclient")
	found := false
	for _, o := range objs {
		j, ok := o.obj.(*batchv1.Job)
		if !ok || o.meta.Name != "example-agent" {
			continue
		}
		found = true
		spec := j.Spec.Template.Spec
		for _, c := range spec.Containers {
			for _, ev := range c.Env {
				if strings.HasPrefix(ev.Name, "AA_") && !known[ev.Name] {
					t.Errorf("example-agent: env %s is read by neither examples/agent nor sdkclient", ev.Name)
				}
			}
		}
		for _, c := range spec.Containers {
			for _, ev := range c.Env {
				if ev.Name == "AA_CREDENTIAL_TOKEN_FILE" && !registers(spec.InitContainers, ev.Value) {
					t.Errorf("example-agent: container %s reads its token from %s, which no init container writes (aa-runtime token --out)", c.Name, ev.Value)
				}
			}
		}
		sidecar := false
		for _, ic := range spec.InitContainers {
			if ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways && strings.Contains(ic.Image, "envoy") {
				sidecar = true
			}
		}
		if !sidecar {
			t.Error("example-agent: no Envoy native sidecar (init container with restartPolicy Always)")
		}
		// Render the sidecar's configuration from the ConfigMap with the
		// container's own environment, as the container does, and validate it.
		for _, ic := range spec.InitContainers {
			if !strings.Contains(ic.Image, "envoy") {
				continue
			}
			if len(ic.Command) != 2 || ic.Command[1] != "/etc/envoy/sidecar.sh" {
				t.Errorf("example-agent: envoy command %v, want [/bin/sh /etc/envoy/sidecar.sh]", ic.Command)
			}
			env := map[string]string{}
			for _, ev := range ic.Env {
				env[ev.Name] = ev.Value
			}
			delete(env, "AA_ENVOY_CONFIG")
			dir := t.TempDir()
			if f := env["AA_CREDENTIAL_TOKEN_FILE"]; f != "" {
				if !registers(spec.InitContainers, f) {
					t.Errorf("example-agent: the sidecar reads its token from %s, which no init container before it writes (aa-runtime token --out)", f)
				}
			}
			cm := configMap(t, objs, o.meta.Namespace, "aa-envoy-sidecar")
			for name, body := range cm.Data {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			static := len(ic.Args) > 0 && ic.Args[0] == "--static"
			checkEnvoyBootstrap(renderSidecar(t, dir, env, static)).report(t, "example-agent sidecar")
			if env["AA_AGENT_ID"] != agentID(spec.Containers) {
				t.Errorf("example-agent: sidecar AA_AGENT_ID %q differs from the agent's %q", env["AA_AGENT_ID"], agentID(spec.Containers))
			}
			if !strings.HasPrefix(env["AA_GATEWAY_HOST"]+":"+env["AA_GATEWAY_PORT"], "aa-gateway-grpc.") {
				t.Errorf("example-agent: sidecar gateway %s:%s is not the headless Service aa-gateway-grpc", env["AA_GATEWAY_HOST"], env["AA_GATEWAY_PORT"])
			}
		}
	}
	if !found {
		t.Fatal("no Job example-agent")
	}
}

// registers reports whether an init container that runs to completion
// before the sidecars (no restartPolicy) writes the token file path with
// `aa-runtime token --out path`.
func registers(inits []corev1.Container, path string) bool {
	for _, ic := range inits {
		if ic.RestartPolicy != nil {
			return false // sidecars start in order: the register step must come first
		}
		if len(ic.Args) > 0 && ic.Args[0] == "token" && slices.Contains(ic.Args, "--out") && slices.Contains(ic.Args, path) {
			return true
		}
	}
	return false
}

// TestKubernetesCheckCatches shows the manifest checks fail on the mistakes
// they exist for.
func TestKubernetesCheckCatches(t *testing.T) {
	base := string(read(t, filepath.Join(deployDir(t), "kubernetes", "gateway.yaml")))
	var rest []object
	_, all := loadKubernetes(t)
	for _, o := range all {
		if o.file != "gateway.yaml" {
			rest = append(rest, o)
		}
	}
	for _, c := range []struct{ name, from, to, want string }{
		{"unknown field", "revisionHistoryLimit: 5", "revisionHistoryLimt: 5", "unknown field \"revisionHistoryLimt\""},
		{"wrong type", "replicas: 2", "replicas: two", "cannot unmarshal"},
		{"probe port", "httpGet: {path: /readyz, port: http}\n          periodSeconds: 5", "httpGet: {path: /readyz, port: htp}\n          periodSeconds: 5", "port \"htp\" is not a named container port"},
		{"service target", "targetPort: grpc\n    appProtocol: grpc\n  - name: http", "targetPort: grpcx\n    appProtocol: grpc\n  - name: http", "targetPort \"grpcx\""},
		{"selector", "matchLabels: {app.kubernetes.io/name: aa-gateway}\n  template", "matchLabels: {app.kubernetes.io/name: aa-gw}\n  template", "does not match the pod template"},
		{"no requests", "requests: {cpu: 500m, memory: 256Mi}", "requests: {memory: 256Mi}", "requests must set cpu and memory"},
		{"secret key", "secretKeyRef: {name: aa-gateway, key: store-url}", "secretKeyRef: {name: aa-gateway, key: store_url}", "key \"store_url\" is not defined"},
		{"pdb", "minAvailable: 1", "minAvailable: 2", "blocks every node drain"},
		{"privileged", "allowPrivilegeEscalation: false\n          readOnlyRootFilesystem: true\n          capabilities: {drop: [ALL]}\n        volumeMounts:\n        - name: policies", "allowPrivilegeEscalation: true\n          readOnlyRootFilesystem: true\n          capabilities: {drop: [ALL]}\n        volumeMounts:\n        - name: policies", "allowPrivilegeEscalation must be false"},
		{"latest", "image: agent-assembly/aa-gateway:dev", "image: agent-assembly/aa-gateway:latest", ":latest"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(base, c.from) {
				t.Fatalf("gateway.yaml no longer contains %q; update this case", c.from)
			}
			objs, err := decodeManifests("gateway.yaml", []byte(strings.Replace(base, c.from, c.to, 1)))
			var e errs
			if err != nil {
				e = errs{err}
			} else {
				e = checkKubernetes(append(objs, rest...))
			}
			if !e.contains(c.want) {
				t.Errorf("found %v, want a problem mentioning %q", e, c.want)
			}
		})
	}
}

// generated are the files written from sources by -update (paths
// relative to deploy/).
var generated = []struct {
	file string
	gen  func(t *testing.T) []byte
}{
	{"kubernetes/policies-configmap.yaml", genPoliciesConfigMap},
	{"kubernetes/envoy-sidecar-configmap.yaml", genEnvoyConfigMap},
	{"envoy/sidecar.yaml", genStaticSidecar},
}

// TestGenerated checks (or with -update rewrites) the files generated from
// examples/policies and envoy/.
func TestGenerated(t *testing.T) {
	for _, g := range generated {
		p := filepath.Join(deployDir(t), g.file)
		want := g.gen(t)
		if *update {
			if err := os.WriteFile(p, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("deploy/%s is out of date with its sources; run: go test ./deploy -run TestGenerated -update", g.file)
		}
	}
}

// configMapYAML renders a ConfigMap with data from files, keys sorted.
func configMapYAML(header, ns, name string, data map[string]string) []byte {
	var b strings.Builder
	b.WriteString(header)
	fmt.Fprintf(&b, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\n  namespace: %s\n  labels: {app.kubernetes.io/part-of: agent-assembly}\ndata:\n", name, ns)
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s: |\n", k)
		for _, l := range strings.Split(strings.TrimRight(data[k], "\n"), "\n") {
			if l == "" {
				b.WriteString("\n")
			} else {
				b.WriteString("    " + l + "\n")
			}
		}
	}
	return []byte(b.String())
}

func genPoliciesConfigMap(t *testing.T) []byte {
	src := filepath.Join(repoRoot(t), "examples", "policies")
	data := map[string]string{}
	for _, p := range files(t, src, ".yaml", ".yml") {
		if filepath.Dir(p) == src {
			data[filepath.Base(p)] = string(read(t, p))
		}
	}
	return configMapYAML("# Generated from examples/policies by `go test ./deploy -run TestGenerated -update`; do not edit.\n# Replace with your own policies (kubectl create configmap aa-policies --from-file=DIR).\n", "agent-assembly", "aa-policies", data)
}

// sidecarFiles are the envoy/ files the sidecar container needs.
var sidecarFiles = []string{"bootstrap.yaml", "static.yaml", "sidecar.sh"}

func genEnvoyConfigMap(t *testing.T) []byte {
	data := map[string]string{}
	for _, f := range sidecarFiles {
		data[f] = string(read(t, filepath.Join(repoRoot(t), "envoy", f)))
	}
	return configMapYAML("# Generated from envoy/ by `go test ./deploy -run TestGenerated -update`; do not edit.\n# The sidecar container runs sidecar.sh, which renders bootstrap.yaml (xDS) or, with --static, static.yaml.\n", "agents", "aa-envoy-sidecar", data)
}

// agentID returns the AA_AGENT_ID of the first container that sets it.
func agentID(cs []corev1.Container) string {
	for _, c := range cs {
		for _, ev := range c.Env {
			if ev.Name == "AA_AGENT_ID" {
				return ev.Value
			}
		}
	}
	return ""
}
