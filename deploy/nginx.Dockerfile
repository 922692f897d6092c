# The front proxy: a stock nginx plus nginx/wschat.conf.
# NGINX_IMAGE defaults to the official image; machines without a registry
# pass --build-arg NGINX_IMAGE=wschat-local/nginx:bookworm
# (deploy/offline-images.sh). The config works on both (nginx 1.22+).
ARG NGINX_IMAGE=nginx:1.30
# Not used: printed just before the FROM below (see deploy/Dockerfile).
ARG IF_FROM_FAILS_TO_PULL="no container registry here? Run 'make images' once (README.md): it builds local base images and sets NGINX_IMAGE in .env"
FROM ${NGINX_IMAGE}
# default.conf replaces the official image's stock server on port 80.
COPY nginx/wschat.conf /etc/nginx/conf.d/default.conf
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/nginx-health"]
