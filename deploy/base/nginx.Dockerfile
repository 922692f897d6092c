# Home-made stand-in for the official nginx image, built by
# deploy/offline-images.sh from Debian's nginx package. It is laid out like
# the official image where the project relies on it: server blocks in
# /etc/nginx/conf.d/*.conf, logs to stdout/stderr, curl for healthchecks,
# nginx in the foreground.
ARG BASE_IMAGE=wschat-local/debian:bookworm
FROM ${BASE_IMAGE}

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stdout /var/log/nginx/access.log \
 && ln -sf /dev/stderr /var/log/nginx/error.log \
 && nginx -v

EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
