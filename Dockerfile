# Production image for veeam-sa.
#
#   docker build -t veeam-sa .
#   docker run -d --name veeam-sa --env-file .env -v veeam-sa-data:/data veeam-sa
#
# Socket Mode needs no published port; in HTTP mode publish it (-p 3000:3000) and point
# the Slack app's request URLs at https://HOST/slack/events. /data holds the SQLite
# database and, when VEEAM_SA_ENCRYPTION_KEY is unset, the generated key file: back it up.

# ---- build: install the package and its dependencies into a self-contained venv ----
FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY bot/ bot/
COPY handlers/ handlers/
COPY storage/ storage/
RUN pip install --no-deps .

# ---- runtime: the venv only, run as an unprivileged user ----
FROM python:3.11-slim-bookworm

COPY --from=builder /opt/venv /opt/venv

RUN groupadd --system --gid 10001 veeam \
    && useradd --system --uid 10001 --gid veeam --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin veeam \
    && mkdir /data \
    && chown veeam:veeam /data \
    && chmod 0700 /data

ENV PATH=/opt/venv/bin:$PATH \
    VEEAM_SA_DB=/data/veeam-sa.db \
    PORT=3000 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /data
VOLUME /data
EXPOSE 3000

# Shell form so ${PORT} follows a PORT given at run time. No curl in the slim image:
# urllib raises (exit 1) on a refused connection, a timeout or a non-2xx answer (503).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${PORT}/healthz', timeout=4)" || exit 1

USER veeam
STOPSIGNAL SIGTERM
ENTRYPOINT ["veeam-sa-bot"]
