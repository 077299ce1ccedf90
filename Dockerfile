# The pod server in a container: SQLite under the /data volume, configured by POD_* variables.
#
#   docker build -t solid-pod .
#   docker run -d -p 8080:8080 -v pods:/data -e POD_BASE_URL=https://pods.example.com/ solid-pod
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml ./
COPY pod ./pod
COPY ldp ./ldp
COPY acl ./acl
COPY data ./data
# Installed in place (-e): the server reads its pod templates and JSON-LD contexts from data/ beside
# its packages, and a wheel of this project does not carry data/. Byte-compiled now, because the
# server's user cannot write here.
RUN pip install -e . && python -m compileall -q pod ldp acl

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin pod \
    && mkdir -p /data && chown pod:pod /data
USER pod
VOLUME /data

# Every option is also a POD_* variable (see README: Configuration), e.g. POD_BASE_URL (the public
# URL: required behind a proxy or load balancer), POD_WORKERS, POD_LOG_FORMAT=json, POD_ACCESS_LOG.
ENV POD_LOG_FORMAT=json
EXPOSE 8080
# docker stop sends SIGTERM to the server (PID 1), which finishes in-flight requests for up to
# POD_SHUTDOWN_TIMEOUT seconds (30): give it that long with `docker stop -t 35` or --stop-timeout.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/.health/ready' % os.environ.get('POD_PORT', '8080'), timeout=4)"
CMD ["pod", "serve", "--host", "0.0.0.0", "--data-dir", "/data"]
