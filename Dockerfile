# smarterbot-notifier in a container: state in the /data volume, config and secrets mounted,
# JSON logs on stdout, health on 127.0.0.1:9464/healthz.
#   docker build -t smarterbot-notifier .
#   docker run -v notifier-data:/data -v ./config.toml:/config/config.toml:ro smarterbot-notifier
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY notifier ./notifier
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin notifier \
    && mkdir -p /data /config \
    && chown notifier:notifier /data \
    && chmod 0700 /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STATE_DIRECTORY=/data \
    SMARTERBOT_NOTIFIER_CONFIG=/config/config.toml \
    SMARTERBOT_NOTIFIER_HTTP_LISTEN=0.0.0.0:9464
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["smarterbot-notifier"]
CMD ["run", "--log-format", "json"]
