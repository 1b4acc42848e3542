# tokendesk: the web app, API and gateway, served by `tokendesk serve`.
# Build: docker build -t tokendesk .   Run: see compose.yaml and README "Containers".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/tokendesk
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /opt/tokendesk/src

# The server never runs as root; its SQLite database (if any) lives in its home.
RUN groupadd --system --gid 10001 tokendesk \
    && useradd --system --uid 10001 --gid tokendesk --home-dir /var/lib/tokendesk \
       --create-home --shell /usr/sbin/nologin tokendesk
COPY deploy/entrypoint.sh /usr/local/bin/tokendesk-entrypoint
RUN chmod 0755 /usr/local/bin/tokendesk-entrypoint

USER tokendesk
WORKDIR /var/lib/tokendesk
ENV TOKENDESK_HOST=0.0.0.0 \
    TOKENDESK_PORT=8000 \
    TOKENDESK_LOG_FORMAT=json \
    TOKENDESK_DATABASE_URL=sqlite+aiosqlite:////var/lib/tokendesk/tokendesk.db
VOLUME ["/var/lib/tokendesk"]
EXPOSE 8000

# docker stop sends SIGTERM: the server drains within TOKENDESK_SHUTDOWN_GRACE_SECONDS
# (30 s by default), so give `docker stop -t` / stop_grace_period a little more.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('TOKENDESK_PORT', '8000')}/readyz\", timeout=4)"]

ENTRYPOINT ["tokendesk-entrypoint"]
CMD ["serve"]
