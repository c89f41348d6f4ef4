// Package conformance runs containerd's own snapshotter test suite
// (snapshots/testsuite) against airgap-snapshotter, through containerd's
// gRPC proxy client (snapshots/proxy), the way containerd talks to a
// `[proxy_plugins]` snapshotter. Every test case gets a fresh daemon with its
// own root and socket.
//
// Build in GOPATH mode against Debian's containerd sources (see
// ../conformance.sh) and run as root with -test.root.
package conformance

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
	"github.com/containerd/containerd/pkg/testutil"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

var daemonBin = flag.String("airgap.bin", os.Getenv("AIRGAP_SNAPSHOTTER_BIN"),
	"path of the airgap-snapshotter binary (or $AIRGAP_SNAPSHOTTER_BIN)")

func TestAirgapSnapshotter(t *testing.T) {
	testutil.RequiresRoot(t)
	if *daemonBin == "" {
		t.Fatal("no daemon binary: pass -airgap.bin or set AIRGAP_SNAPSHOTTER_BIN")
	}
	testsuite.SnapshotterSuite(t, "Airgap", newSnapshotter)
}

// newSnapshotter starts `airgap-snapshotter serve` with its state under root
// and returns a proxy snapshotter connected to it. The cleanup function stops
// the daemon with SIGTERM and fails if it does not exit cleanly.
func newSnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
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

	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
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
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(dialCtx, "unix://"+socket,
		grpc.WithInsecure(), grpc.WithBlock(), grpc.WithContextDialer(dialer))
	if err != nil {
		_ = stop()
		return nil, nil, fmt.Errorf("dial %s: %w", socket, err)
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "airgap")
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
