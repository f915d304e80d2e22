package config

import (
	"errors"
	"regexp"
	"strconv"
)

// The names dynocycle puts into a Platform API path, DELETE
// /apps/{app}/dynos/{dyno}, must be in one of Heroku's forms; anything else
// is refused before a request is made. Left unchecked, HEROKU_APP_NAME
// "app/dynos?x=" turns the restart of one dyno into DELETE /apps/app/dynos,
// the restart of every dyno, and DYNO "../../../account/x" reaches another
// endpoint altogether.
var (
	// The Platform API schema's pattern for an app name (heroku-go v5
	// schema.json, definitions.app.name): lowercase letters, digits and
	// dashes, starting with a letter, not ending with a dash, 3 to 30 long.
	appNameForm = regexp.MustCompile(`^[a-z][a-z0-9-]{1,28}[a-z0-9]$`)
	uuidForm    = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	// A process type is ^[-\w]{1,128}$ (schema.json, definitions.formation.type).
	// Cedar names a dyno TYPE.N: worker.1, run.1234, scheduler.5678, release.1.
	cedarDynoForm = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}\.[0-9]{1,10}$`)
	// Fir names it TYPE-HASH-SUFFIX, worker-5d8f7c9b4-k2x7p. Both generated
	// parts are required: a bare process type ("worker") in that path is
	// Heroku's restart of every dyno of the type.
	firDynoForm = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}-[a-z0-9]{5,10}-[a-z0-9]{5}$`)
)

// Accepted forms, for error messages.
const (
	AppForm  = "a Heroku app name (lowercase letters, digits and dashes, starting with a letter, 3-30 long) or an app id (UUID)"
	DynoForm = "a Heroku dyno name such as worker.1 or run.1234 (Cedar) or worker-5d8f7c9b4-k2x7p (Fir), or a dyno id (UUID)"
)

// CheckHerokuApp returns an error unless s is an app name or id in Heroku's
// form.
func CheckHerokuApp(s string) error {
	if appNameForm.MatchString(s) || uuidForm.MatchString(s) {
		return nil
	}
	return errors.New("not a Heroku app name or id")
}

// CheckHerokuAppID returns an error unless s is an app id (a UUID).
func CheckHerokuAppID(s string) error {
	if uuidForm.MatchString(s) {
		return nil
	}
	return errors.New("not a Heroku app id")
}

// CheckHerokuDyno returns an error unless s is a dyno name (Cedar or Fir) or
// a dyno id.
func CheckHerokuDyno(s string) error {
	if cedarDynoForm.MatchString(s) || firDynoForm.MatchString(s) || uuidForm.MatchString(s) {
		return nil
	}
	return errors.New("not a Heroku dyno name or id")
}

// nameErrors checks the names that reach the Platform API: the app's name or
// id whenever set (they also scope the fleet's keys), DYNO when the agent
// restarts through Heroku.
func (c *Config) nameErrors() Errors {
	var errs Errors
	check := func(v, value string, ok func(string) error, accepted string) {
		if value == "" {
			return
		}
		if err := ok(value); err != nil {
			errs = append(errs, &Error{Var: v, Value: printable(value), Problem: err.Error(), Accepted: accepted})
		}
	}
	check("HEROKU_APP_NAME", c.HerokuAppName, CheckHerokuApp, AppForm)
	check("HEROKU_APP_ID", c.HerokuAppID, CheckHerokuAppID, "the app's id, a UUID such as 9daa2797-e49b-4624-932f-ec3f9688e3da")
	if c.ResolvePlatform(true) == PlatformHeroku {
		check("DYNO", c.Dyno, CheckHerokuDyno, DynoForm)
	}
	return errs
}

// printable quotes a value that would not print as itself on one line.
func printable(s string) string {
	if q := strconv.Quote(s); q[1:len(q)-1] != s {
		return q
	}
	return s
}
