// Experiment: does containerd 2.3's mount manager mount the daemon's EROFS
// tar-index layers (erofs, source = layer.erofs, device=layer.tar) under a
// "format/mkdir/overlay" that names them as {{ mount N }}, as a snapshotter's
// Mounts answer would make it? Times Activate and Deactivate.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

func main() {
	addr, work := os.Args[1], os.Args[2]
	layers := os.Args[3:]
	rounds, _ := strconv.Atoi(os.Getenv("ROUNDS"))
	if rounds == 0 {
		rounds = 20
	}
	c, err := containerd.New(addr)
	check(err)
	ctx := namespaces.WithNamespace(context.Background(), "exp")
	// Under a lease, as a task's activation is under its container's
	// back reference: containerd's GC removes unreferenced activations.
	ctx, done, err := c.WithLease(ctx)
	check(err)
	defer done(context.Background())
	mm := c.MountManager()

	var ms []mount.Mount
	var lowers []string
	for i, l := range layers {
		ms = append(ms, mount.Mount{Type: "erofs", Source: l + "/layer.erofs",
			Options: []string{"ro", "device=" + l + "/layer.tar"}})
		lowers = append(lowers, fmt.Sprintf("{{ mount %d }}", i))
	}
	up := work + "/upper"
	os.MkdirAll(up, 0o755)
	os.MkdirAll(work+"/work", 0o755)
	ms = append(ms, mount.Mount{Type: "format/overlay", Source: "overlay",
		Options: []string{"lowerdir=" + strings.Join(lowers, ":"), "upperdir=" + up, "workdir=" + work + "/work"}})

	var act, deact time.Duration
	for r := 0; r < rounds; r++ {
		name := fmt.Sprintf("exp-%d", r)
		t := time.Now()
		info, err := mm.Activate(ctx, name, ms)
		check(err)
		act += time.Since(t)
		if r == 0 {
			fmt.Printf("active (mounted by containerd): %d\n", len(info.Active))
			for _, a := range info.Active {
				fmt.Printf("  %s %s at %s\n", a.Type, a.Source, a.MountPoint)
			}
			fmt.Printf("system (for the caller to mount): %+v\n", info.System)
			// Mount the overlay the way a shim would, and read the layers.
			target := work + "/rootfs"
			os.MkdirAll(target, 0o755)
			check(mount.All(info.System, target))
			out, _ := exec.Command("ls", "-la", target).CombinedOutput()
			fmt.Printf("rootfs:\n%s", out)
			check(mount.UnmountAll(target, 0))
		}
		t = time.Now()
		check(mm.Deactivate(ctx, name))
		deact += time.Since(t)
	}
	fmt.Printf("layers=%d rounds=%d activate=%v/round deactivate=%v/round\n",
		len(layers), rounds, act/time.Duration(rounds), deact/time.Duration(rounds))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
