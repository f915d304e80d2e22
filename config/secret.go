package config

import "net/url"

// Secret is a value that must never be printed: its String and GoString
// methods redact it, so a stray %v or slog attribute cannot leak it.
type Secret string

const redacted = "[redacted]"

func (s Secret) String() string   { return s.Redacted() }
func (s Secret) GoString() string { return s.Redacted() }

// Redacted is "none" for an empty secret and "[redacted]" otherwise.
func (s Secret) Redacted() string {
	if s == "" {
		return "none"
	}
	return redacted
}

// MarshalText keeps secrets out of JSON and logfmt output too.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.Redacted()), nil }

// RedactURL returns a URL with its password replaced, for display.
func RedactURL(raw string) string {
	if raw == "" {
		return "none"
	}
	u, err := url.Parse(raw)
	if err != nil {
		return redacted
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	return u.Redacted()
}

// RedactUserinfo returns a URL with any user and password replaced, for
// display: an API URL has no business carrying credentials, so even a bare
// user name may be a token.
func RedactUserinfo(raw string) string {
	if raw == "" {
		return "none"
	}
	u, err := url.Parse(raw)
	if err != nil {
		return redacted
	}
	if u.User != nil {
		u.User = url.User("xxxxx")
	}
	return u.String()
}
