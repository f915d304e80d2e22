package platform

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/dynocycle/dynocycle/config"
)

// appJSON is the part of app.json's schema the checks below need.
type appJSON struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Repository  string `json:"repository"`
	Buildpacks  []struct {
		URL string `json:"url"`
	} `json:"buildpacks"`
	Formation map[string]struct {
		Quantity *int   `json:"quantity"`
		Size     string `json:"size"`
	} `json:"formation"`
	Addons []json.RawMessage `json:"addons"`
	Env    map[string]struct {
		Description string `json:"description"`
		Value       string `json:"value"`
		Required    *bool  `json:"required"`
		Generator   string `json:"generator"`
	} `json:"env"`
}

// exampleVars are read by the demo worker the Procfile wraps, not by
// dynocycle; each must still be read by that worker.
var exampleVars = map[string]string{
	"BLOAT_MB": "../examples/bloater/main.go",
	"JOB_MS":   "../examples/bloater/main.go",
}

func TestAppJSON(t *testing.T) {
	raw, err := os.ReadFile("../app.json")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields() // a typo'd key would be silently ignored by Heroku
	var app struct {
		appJSON
		Keywords     []string `json:"keywords"`
		Environments struct {
			Review appJSON `json:"review"`
			Test   struct {
				Env     map[string]string `json:"env"`
				Scripts struct {
					Test string `json:"test"`
				} `json:"scripts"`
			} `json:"test"`
		} `json:"environments"`
	}
	if err := dec.Decode(&app); err != nil {
		t.Fatalf("app.json: %v", err)
	}
	if app.Name == "" || app.Description == "" || app.Repository == "" {
		t.Error("app.json needs name, description and repository")
	}
	if len(app.Buildpacks) == 0 || app.Buildpacks[0].URL != "heroku/go" {
		t.Errorf("buildpacks = %+v, want heroku/go", app.Buildpacks)
	}
	if w, ok := app.Formation["worker"]; !ok || w.Quantity == nil || *w.Quantity != 2 {
		t.Errorf("formation = %+v, want worker with quantity 2", app.Formation)
	}
	if !strings.Contains(string(raw), `"heroku-redis`) || len(app.Addons) != 1 {
		t.Errorf("addons = %s, want heroku-redis", app.Addons)
	}

	tok, ok := app.Env["HEROKU_API_TOKEN"]
	if !ok || tok.Required == nil || !*tok.Required || tok.Value != "" || tok.Generator != "" {
		t.Errorf("HEROKU_API_TOKEN must be required, with no value or generator: %+v", tok)
	}
	if !strings.Contains(tok.Description, "least-privilege") {
		t.Errorf("HEROKU_API_TOKEN's description should ask for a least-privilege token: %q", tok.Description)
	}

	read := configVars(t)

	// Review apps work as they are: each is a new app, which gets its own
	// name only when it is declared required (fleet mode needs it with
	// Redis), and may have no token, or one that is refused (403), in
	// which case dynocycle restarts in place.
	review := app.Environments.Review
	if n, ok := review.Env["HEROKU_APP_NAME"]; !ok || n.Required == nil || !*n.Required {
		t.Errorf("environments.review must declare HEROKU_APP_NAME required, so Heroku injects it: %+v", n)
	}
	if tok, ok := review.Env["HEROKU_API_TOKEN"]; !ok || tok.Required == nil || *tok.Required {
		t.Errorf("environments.review must not require HEROKU_API_TOKEN: %+v", tok)
	}
	if w, ok := review.Formation["worker"]; !ok || w.Quantity == nil || *w.Quantity < 1 {
		t.Errorf("environments.review.formation = %+v, want a worker", review.Formation)
	}
	if len(review.Addons) != 1 || !strings.Contains(string(review.Addons[0]), `"heroku-redis`) {
		t.Errorf("environments.review.addons = %s, want heroku-redis", review.Addons)
	}
	for name, v := range review.Env {
		if !read[name] || v.Description == "" {
			t.Errorf("environments.review.env %s: not read by dynocycle, or no description", name)
		}
	}
	// Heroku CI: a test script that runs the binary the build installed,
	// with an environment check accepts without a dyno's memory limit.
	test := app.Environments.Test
	if !strings.Contains(test.Scripts.Test, "dynocycle check -- bloater") {
		t.Errorf("environments.test.scripts.test = %q, want it to run dynocycle check on the Procfile's worker", test.Scripts.Test)
	}
	if test.Env["MAX_RSS"] == "" || test.Env["PLATFORM"] != "local" {
		t.Errorf("environments.test.env = %v, want MAX_RSS (no container limit need be detected) and PLATFORM=local", test.Env)
	}
	for name := range test.Env {
		if !read[name] {
			t.Errorf("environments.test.env %s: dynocycle does not read it", name)
		}
	}

	valid := regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
	for name, v := range app.Env {
		if !valid.MatchString(name) {
			t.Errorf("env %s: not a valid config var name", name)
		}
		if v.Description == "" {
			t.Errorf("env %s: no description", name)
		}
		if src, ok := exampleVars[name]; ok {
			code, err := os.ReadFile(src)
			if err != nil || !strings.Contains(string(code), `"`+name+`"`) {
				t.Errorf("env %s: the example worker %s does not read it", name, src)
			}
			continue
		}
		if !read[name] {
			t.Errorf("env %s: dynocycle does not read it (config.Config has no such tag)", name)
		}
	}
}

// configVars returns the variables dynocycle reads: config.Config's tags.
func configVars(t *testing.T) map[string]bool {
	t.Helper()
	vars := map[string]bool{}
	typ := reflect.TypeFor[config.Config]()
	for i := range typ.NumField() {
		if name := typ.Field(i).Tag.Get("envconfig"); name != "" {
			vars[name] = true
		}
	}
	if len(vars) < 10 {
		t.Fatalf("found only %d envconfig tags in config.Config", len(vars))
	}
	return vars
}

func TestProcfile(t *testing.T) {
	raw, err := os.ReadFile("../Procfile")
	if err != nil {
		t.Fatal(err)
	}
	// The Go buildpack installs ./cmd/dynocycle and ./examples/bloater as
	// bin/dynocycle and bin/bloater, and puts bin on PATH.
	if !regexp.MustCompile(`(?m)^worker: dynocycle run -- bloater$`).Match(raw) {
		t.Errorf("Procfile = %q, want a worker line wrapping bloater", raw)
	}
}
