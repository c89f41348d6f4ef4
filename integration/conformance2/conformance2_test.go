// Package conformance2 runs containerd 2.x's own snapshotter test suite
// (core/snapshots/testsuite) against airgap-snapshotter, through
// containerd 2.x's gRPC proxy client (core/snapshots/proxy), the way
// containerd 2.x talks to a `[proxy_plugins]` snapshotter. Every test case
// gets a fresh daemon with its own root and socket.
//
// TestOverlayReference runs the same suite, over the same proxy client,
// against containerd 2.x's own overlayfs snapshotter served over gRPC
// in-process (contrib/snapshotservice on a unix socket): the bar the daemon
// is held to.
//
// A Go module of its own (go.mod pins containerd 2.3 LTS, go.sum is
// committed); ../conformance2.sh builds the test binary with Go 1.26 and runs
// it as root with -test.root.
package conformance2

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/containerd/v2/pkg/dialer"
	"github.com/containerd/containerd/v2/pkg/testutil"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

var daemonBin = flag.String("airgap.bin", os.Getenv("AIRGAP_SNAPSHOTTER_BIN"),
	"path of the airgap-snapshotter binary (or $AIRGAP_SNAPSHOTTER_BIN)")

// The suite keys some checks on the snapshotter's name: for "overlayfs" its
// Rename case does not rename a directory of a lower layer (overlayfs without
// redirect_dir answers EXDEV). By default both snapshotters run under
// neutral names, with every check; -suite.overlayfs-name runs them under the
// name containerd's own overlayfs test uses.
var overlayfsName = flag.Bool("suite.overlayfs-name", false,
	"run the suite under the snapshotter name \"overlayfs\" (its overlayfs exemptions)")

func suiteName(neutral string) string {
	if *overlayfsName {
		return "overlayfs"
	}
	return neutral
}

func TestAirgapSnapshotter(t *testing.T) {
	testutil.RequiresRoot(t)
	if *daemonBin == "" {
		t.Fatal("no daemon binary: pass -airgap.bin or set AIRGAP_SNAPSHOTTER_BIN")
	}
	testsuite.SnapshotterSuite(t, suiteName("Airgap"), newAirgapSnapshotter)
}

// TestOverlayReference: containerd 2.x's overlayfs snapshotter behind the
// same gRPC proxy, so that its results are the bar for the daemon's.
func TestOverlayReference(t *testing.T) {
	testutil.RequiresRoot(t)
	testsuite.SnapshotterSuite(t, suiteName("Overlay"), newOverlaySnapshotter)
}

// dial connects the proxy client to a snapshots service on socket exactly
// as containerd 2.x connects to a `[proxy_plugins]` address
// (cmd/containerd/server: grpc.NewClient of dialer.DialAddress, i.e.
// unix://PATH, with insecure credentials and dialer.ContextDialer).
func dial(socket, name string) (snapshots.Snapshotter, *grpc.ClientConn, error) {
	conn, err := grpc.NewClient(dialer.DialAddress(socket),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer.ContextDialer))
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", socket, err)
	}
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name), conn, nil
}

// newOverlaySnapshotter serves overlay.NewSnapshotter(root) on a unix
// socket under root and returns a proxy snapshotter connected to it.
func newOverlaySnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	inner, err := overlay.NewSnapshotter(filepath.Join(root, "state"))
	if err != nil {
		return nil, nil, err
	}
	socket := filepath.Join(root, "run", "snapshotter.sock")
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		inner.Close()
		return nil, nil, err
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		inner.Close()
		return nil, nil, err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(inner))
	go srv.Serve(l)
	sn, conn, err := dial(socket, "overlayfs")
	if err != nil {
		srv.Stop()
		inner.Close()
		return nil, nil, err
	}
	cleanup := func() error {
		cerr := conn.Close()
		srv.Stop()
		if err := inner.Close(); err != nil {
			return err
		}
		return cerr
	}
	return sn, cleanup, nil
}

// newAirgapSnapshotter starts `airgap-snapshotter serve` with its state
// under root and returns a proxy snapshotter connected to it. The cleanup
// function stops the daemon with SIGTERM and fails if it does not exit
// cleanly.
func newAirgapSnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	socket := filepath.Join(root, "run", "snapshotter.sock")
	logPath := filepath.Join(filepath.Dir(root), "daemon.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(*daemonBin, "serve",
		"--root", filepath.Join(root, "state"),
		"--socket", socket,
		"--archives", filepath.Join(root, "archives"),
		"--mirror-listen", "off",
		"--metrics-listen", "off", "--import-mode", "off")
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, nil, fmt.Errorf("start daemon: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logFile.Close() }()

	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				return fmt.Errorf("daemon exit: %v (log: %s)", err, dumpLog(logPath))
			}
			return nil
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("daemon did not stop on SIGTERM (log: %s)", dumpLog(logPath))
		}
	}

	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		select {
		case err := <-exited:
			return nil, nil, fmt.Errorf("daemon exited early: %v (log: %s)", err, dumpLog(logPath))
		default:
		}
		if time.Now().After(deadline) {
			_ = stop()
			return nil, nil, fmt.Errorf("socket %s did not appear (log: %s)", socket, dumpLog(logPath))
		}
		time.Sleep(20 * time.Millisecond)
	}
	sn, conn, err := dial(socket, "airgap")
	if err != nil {
		_ = stop()
		return nil, nil, err
	}
	cleanup := func() error {
		cerr := conn.Close()
		if err := stop(); err != nil {
			return err
		}
		return cerr
	}
	return sn, cleanup, nil
}

func dumpLog(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 8192 {
		b = b[len(b)-8192:]
	}
	return string(b)
}
