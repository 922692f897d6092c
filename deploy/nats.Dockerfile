# A node of the NATS profile's cluster: a stock nats-server image plus
# nats/wschat.conf (JetStream on /data, the cluster's routes).
# NATS_IMAGE defaults to the official image's alpine variant (it has the
# wget the healthcheck needs; the plain one has no shell at all);
# machines without a registry pass
# --build-arg NATS_IMAGE=wschat-local/nats:2.15.3 (deploy/offline-images.sh
# compiles nats-server from the Go module proxy; `make images` records it
# in .env for Compose). Classic builder compatible, like deploy/Dockerfile.
ARG NATS_IMAGE=nats:2.15-alpine
# Not used: printed just before the FROM below (see deploy/Dockerfile).
ARG IF_FROM_FAILS_TO_PULL="no container registry here? Run 'make images' once (README.md): it builds local base images and sets NATS_IMAGE in .env"
FROM ${NATS_IMAGE}
COPY nats/wschat.conf /etc/nats/wschat.conf
# An empty /data owned by the runtime user, so that a fresh named volume
# mounted there inherits that ownership.
RUN mkdir -p /data && chown 65532:65532 /data
USER 65532:65532
VOLUME ["/data"]
EXPOSE 4222 6222 8222
# js-enabled-only: the node is up with JetStream on; not whether the
# cluster has quorum (a lone node waiting for its peers is healthy).
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8222/healthz?js-enabled-only=true"]
ENTRYPOINT ["nats-server", "--config", "/etc/nats/wschat.conf"]
CMD []
