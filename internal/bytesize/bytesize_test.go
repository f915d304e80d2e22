package bytesize

import "testing"

func TestMB(t *testing.T) {
	for b, want := range map[uint64]string{0: "0.0MB", 1 << 20: "1.0MB", 450 << 20: "450.0MB", 1536 << 19: "768.0MB", 3 << 19: "1.5MB"} {
		if got := MB(b); got != want {
			t.Errorf("MB(%d) = %q, want %q", b, got, want)
		}
	}
}

func TestHuman(t *testing.T) {
	for b, want := range map[uint64]string{900 << 10: "900KB", 300 << 20: "300MB", 1536 << 20: "1.5GB", 12 << 30: "12GB"} {
		if got := Human(b); got != want {
			t.Errorf("Human(%d) = %q, want %q", b, got, want)
		}
	}
}
