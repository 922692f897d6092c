# Home-made stand-in for the official nats image (its alpine variant),
# built by deploy/offline-images.sh on machines that reach no container
# registry: nats-server compiled from the Go module proxy by the local Go
# image, in a runtime of two static binaries. It is laid out like the
# official image where the project relies on it (deploy/nats.Dockerfile):
# nats-server on PATH, a shell with mkdir and chown, and wget for the
# healthcheck — here busybox, from Debian's busybox-static, as in alpine.
ARG GO_IMAGE=wschat-local/golang:1.26
ARG BASE_IMAGE=wschat-local/debian:bookworm
FROM ${GO_IMAGE} AS build
ARG NATS_SERVER_VERSION=v2.15.3
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
RUN go install -ldflags='-s -w' "github.com/nats-io/nats-server/v2@${NATS_SERVER_VERSION}" \
 && rm -rf /go/pkg/mod /root/.cache/go-build \
 && nats-server --version

FROM ${BASE_IMAGE} AS tools
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends busybox-static \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /rootfs/bin /rootfs/tmp /rootfs/etc \
 && chmod 1777 /rootfs/tmp \
 && cp /bin/busybox /rootfs/bin/busybox \
 && for t in sh wget mkdir chown ls cat; do ln -s busybox "/rootfs/bin/$t"; done \
 && printf 'root:x:0:0:root:/root:/bin/sh\nnats:x:65532:65532:nats:/data:/bin/sh\n' >/rootfs/etc/passwd \
 && printf 'root:x:0:\nnats:x:65532:\n' >/rootfs/etc/group

FROM scratch
COPY --from=tools /rootfs/ /
COPY --from=build /go/bin/nats-server /usr/local/bin/nats-server
ENV PATH=/usr/local/bin:/bin
EXPOSE 4222 6222 8222
ENTRYPOINT ["nats-server"]
