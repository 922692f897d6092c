package fault

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"path"
	"strings"
	"testing"
	"time"

	mobynet "github.com/moby/moby/api/types/network"
	moby "github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"

	"github.com/wschat/wschat/integration/dockerstack"
)

// pollEvery is how often a fault's effect is looked for.
const pollEvery = 200 * time.Millisecond

// poll checks cond every pollEvery until it holds, for at most limit.
func poll(ctx context.Context, limit time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %s", what, limit)
		}
	}
}

// waitExited waits until a killed container is no longer running.
func waitExited(ctx context.Context, t *testing.T, ctr *testcontainers.DockerContainer) {
	t.Helper()
	err := poll(ctx, 30*time.Second, "container exited", func() (bool, error) {
		res, err := dockerstack.Docker().ContainerInspect(ctx, ctr.GetContainerID(), moby.ContainerInspectOptions{})
		if err != nil {
			return false, err
		}
		return !res.Container.State.Running, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// killAndRestart SIGKILLs a container and starts it again, as Compose's
// restart policy does, then waits until it is healthy. It calls down once
// the container is gone.
func killAndRestart(ctx context.Context, t *testing.T, s *dockerstack.Stack, ctr *testcontainers.DockerContainer, down func()) {
	t.Helper()
	s.Kill(ctx, ctr)
	waitExited(ctx, t, ctr)
	down()
	if err := ctr.Start(ctx); err != nil {
		t.Fatalf("start again after SIGKILL: %v", err)
	}
}

// freeze pauses a container (every process stopped, its sockets open)
// for d, then thaws it. It calls down once the container is frozen.
func freeze(ctx context.Context, t *testing.T, ctr *testcontainers.DockerContainer, d time.Duration, down func()) {
	t.Helper()
	docker := dockerstack.Docker()
	if _, err := docker.ContainerPause(ctx, ctr.GetContainerID(), moby.ContainerPauseOptions{}); err != nil {
		t.Fatalf("pause: %v", err)
	}
	down()
	// The freeze's length is the fault itself, not a wait for anything.
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	// Thaw with a fresh context: a frozen container must not outlive a
	// test that ran out of time.
	uctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := docker.ContainerUnpause(uctx, ctr.GetContainerID(), moby.ContainerUnpauseOptions{}); err != nil {
		t.Fatalf("unpause: %v", err)
	}
}

// logLines counts the lines of a container's log that contain text.
func logLines(ctx context.Context, ctr *testcontainers.DockerContainer, text string) (int, error) {
	rc, err := ctr.Logs(ctx)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	n := 0
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if strings.Contains(sc.Text(), text) {
			n++
		}
	}
	return n, sc.Err()
}

// waitLog waits until the container has logged text once more than the
// before lines it had.
func waitLog(ctx context.Context, t *testing.T, ctr *testcontainers.DockerContainer, text string, before int, limit time.Duration) {
	t.Helper()
	err := poll(ctx, limit, fmt.Sprintf("log line %q", text), func() (bool, error) {
		n, err := logLines(ctx, ctr, text)
		return n > before, err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Lines ws-user logs when its relay link drops and when it is up again
// (services/user/internal/relay).
const (
	linkLost = "relay link: lost"
	linkUp   = "relay link: up"
)

// cutOff disconnects a replica from the relay link's network until it
// has noticed (its keepalive failed), then connects it again and waits
// until its link is back up. It calls down once it is disconnected.
func cutOff(ctx context.Context, t *testing.T, s *dockerstack.Stack, ctr *testcontainers.DockerContainer, down func()) {
	t.Helper()
	docker := dockerstack.Docker()
	lost, err := logLines(ctx, ctr, linkLost)
	if err != nil {
		t.Fatalf("logs: %v", err)
	}
	up, err := logLines(ctx, ctr, linkUp)
	if err != nil {
		t.Fatalf("logs: %v", err)
	}
	id := ctr.GetContainerID()
	if _, err := docker.NetworkDisconnect(ctx, s.RelayNetwork(), moby.NetworkDisconnectOptions{Container: id, Force: true}); err != nil {
		t.Fatalf("network disconnect: %v", err)
	}
	down()
	waitLog(ctx, t, ctr, linkLost, lost, 60*time.Second)
	_, err = docker.NetworkConnect(ctx, s.RelayNetwork(), moby.NetworkConnectOptions{
		Container:      id,
		EndpointConfig: &mobynet.EndpointSettings{Aliases: []string{"ws-user"}},
	})
	if err != nil {
		t.Fatalf("network connect: %v", err)
	}
	waitLog(ctx, t, ctr, linkUp, up, 60*time.Second)
}

// The relayer's data directory in its container, and the files of it the
// suite reads and damages (services/relayer/internal/store).
const (
	dataDir  = "/data"
	logFile  = "wschat.log"
	epochTag = "EPOCH"
)

// readFile copies one file out of a container (running or not).
func readFile(ctx context.Context, ctr *testcontainers.DockerContainer, file string) ([]byte, error) {
	res, err := dockerstack.Docker().CopyFromContainer(ctx, ctr.GetContainerID(), moby.CopyFromContainerOptions{SourcePath: file})
	if err != nil {
		return nil, fmt.Errorf("copy %s out: %w", file, err)
	}
	defer res.Content.Close()
	tr := tar.NewReader(res.Content)
	if _, err := tr.Next(); err != nil {
		return nil, fmt.Errorf("copy %s out: %w", file, err)
	}
	return io.ReadAll(tr)
}

// serviceUID is the user the images run as (deploy/Dockerfile).
const serviceUID = 65532

// writeFile replaces one file in a stopped container's volume, owned by
// the services' user. (Docker's CopyUIDGID cannot be used: it looks the
// user up in /etc/passwd, which the scratch images do not have.)
func writeFile(ctx context.Context, ctr *testcontainers.DockerContainer, file string, data []byte) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Name: path.Base(file), Mode: 0o644, Size: int64(len(data)), ModTime: time.Now(), Uid: serviceUID, Gid: serviceUID}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if _, err := tw.Write(data); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	_, err := dockerstack.Docker().CopyToContainer(ctx, ctr.GetContainerID(), moby.CopyToContainerOptions{
		DestinationPath: path.Dir(file),
		Content:         &buf,
	})
	if err != nil {
		return fmt.Errorf("copy %s in: %w", file, err)
	}
	return nil
}

// damage is one way the relayer's log can be damaged between two runs.
type damage int

const (
	// truncated: the last records are gone, cut at a record boundary (a
	// file system that lost the tail of a file, a restored backup).
	truncated damage = iota
	// tornTail: the last record is cut in the middle of its payload.
	tornTail
	// flipped: bytes in a record in the middle are changed (bit rot);
	// intact records follow.
	flipped
)

func (d damage) String() string {
	return [...]string{"truncated", "torn tail", "flipped bytes"}[d]
}

// damagedRecords is how many records truncation drops.
const damagedRecords = 5

// records returns the offset of every record of a log: [uint32 length]
// [uint32 CRC-32C][payload], little-endian (services/relayer/internal/store).
func records(log []byte) ([]int, error) {
	var offs []int
	for off := 0; off < len(log); {
		if len(log)-off < 8 {
			return nil, fmt.Errorf("torn header at %d", off)
		}
		size := int(binary.LittleEndian.Uint32(log[off:]))
		if off+8+size > len(log) {
			return nil, fmt.Errorf("torn record at %d", off)
		}
		offs = append(offs, off)
		off += 8 + size
	}
	return offs, nil
}

// apply damages an intact log.
func (d damage) apply(log []byte) ([]byte, error) {
	offs, err := records(log)
	if err != nil {
		return nil, err
	}
	if len(offs) < 4*damagedRecords {
		return nil, fmt.Errorf("only %d records: too few to damage", len(offs))
	}
	switch d {
	case truncated:
		return log[:offs[len(offs)-damagedRecords]], nil
	case tornTail:
		last := offs[len(offs)-1]
		size := int(binary.LittleEndian.Uint32(log[last:]))
		return log[:last+8+size/2], nil
	default:
		mid := offs[len(offs)/2]
		out := bytes.Clone(log)
		for i := 8; i < 11; i++ {
			out[mid+i] ^= 0xff
		}
		return out, nil
	}
}

// damageLog stops the relayer (SIGTERM: its log is complete), damages
// its log, and starts it again. It returns the time between the two runs
// when the relayer came back with a new epoch (its numbers start over),
// else the zero time. It calls down once the relayer has stopped.
func damageLog(ctx context.Context, t *testing.T, s *dockerstack.Stack, d damage, down func()) time.Time {
	t.Helper()
	ctr := s.Relayer()
	before, err := readFile(ctx, ctr, path.Join(dataDir, epochTag))
	if err != nil {
		t.Fatal(err)
	}
	s.Stop(ctx, ctr)
	between := time.Now()
	down()
	log, err := readFile(ctx, ctr, path.Join(dataDir, logFile))
	if err != nil {
		t.Fatal(err)
	}
	bad, err := d.apply(log)
	if err != nil {
		t.Fatalf("damage the log (%s): %v", d, err)
	}
	if err := writeFile(ctx, ctr, path.Join(dataDir, logFile), bad); err != nil {
		t.Fatal(err)
	}
	t.Logf("log damaged (%s): %d of %d bytes kept", d, len(bad), len(log))
	if err := ctr.Start(ctx); err != nil {
		t.Fatalf("start the relayer again: %v", err)
	}
	after, err := readFile(ctx, ctr, path.Join(dataDir, epochTag))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Logf("the relayer's log has a new epoch")
		return between
	}
	return time.Time{}
}
