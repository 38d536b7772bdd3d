# The registry server.  Build: docker build -t ota-server .
# Run:   docker run -p 8000:8000 -v ota-data:/data -e OTA_ENVIRONMENT=development ota-server
#        (production, the image's default: pass OTA_ADMIN_TOKEN and OTA_ENROLLMENT_TOKEN, or mount files,
#        and provision the fleet keys in the volume once: `ota keys init --root-key-out /offline/root-key.pem`)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OTA_DATA_DIR=/data \
    OTA_ENVIRONMENT=production

RUN useradd --create-home --uid 10001 ota
WORKDIR /app

# Dependencies first so code edits do not invalidate this layer.  No simulator/: the image is the registry.
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY models ./models
COPY server ./server
COPY client ./client
COPY cli ./cli
COPY migrations ./migrations
COPY alembic.ini ./
# The registry's extra: the base install is the car's light set (see the README).
RUN pip install --no-compile '.[server]' && mkdir -p /data && chown ota:ota /data

USER ota
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["ota", "serve", "--host", "0.0.0.0", "--port", "8000"]
