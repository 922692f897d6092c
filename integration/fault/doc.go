// Package fault is wschat's fault suite: the images of docker-compose.yml
// in containers (package dockerstack), clients through nginx under steady
// traffic, and one fault per scenario — the relayer or a ws-user killed
// with SIGKILL, the relayer frozen (docker pause), a ws-user cut off from
// the relayer (docker network disconnect), the relayer's log damaged
// between two runs. A checker then verifies, per room and member, that
// every acknowledged message arrived exactly once and in sequence order.
//
// docs/reliability.md has the scenarios, the method and the figures. The
// fast scenarios run in `make test`; WSCHAT_FAULT_LONG=1 adds the long
// ones (a 40 s freeze) and repeats every scenario WSCHAT_FAULT_RUNS times
// (3 by default in that mode). WSCHAT_FAULT_REPORT=<file> appends each
// run's figures to that file as rows of the table in docs/reliability.md.
package fault
