# Home-made stand-in for the official golang image, built by
# deploy/offline-images.sh on machines that reach no container registry.
# The build context holds the host's Go toolchain as ./go and the host's
# locally added CA certificates as ./local-ca (possibly empty).
ARG BASE_IMAGE=wschat-local/debian:bookworm
FROM ${BASE_IMAGE}

# ca-certificates: the module proxy is HTTPS; git: modules fetched "direct".
# The image trusts what the host trusts: where HTTPS goes through a
# TLS-inspecting egress proxy (corporate networks, some CI), its CA is
# installed on the host, and module downloads in builds must accept it too.
COPY local-ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates git \
 && rm -rf /var/lib/apt/lists/* \
 && update-ca-certificates

ENV GOPATH=/go \
    PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    GOTOOLCHAIN=local
COPY go /usr/local/go
RUN mkdir -p /go/src /go/bin && chmod -R 1777 /go && go version
WORKDIR /go
