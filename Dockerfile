# Sentinel's container image: `docker build -t sentinel-llm .` (compose/docker-compose.yml builds it).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sentinel ./sentinel
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/sentinel sentinel
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER sentinel
WORKDIR /var/lib/sentinel
# Inside a container both ports listen on every interface; publish them deliberately.
ENV SENTINEL_HOST=0.0.0.0 \
    SENTINEL_PORT=8080 \
    SENTINEL_ADMIN_HOST=0.0.0.0 \
    SENTINEL_ADMIN_PORT=9464 \
    SENTINEL_DATA_DIR=/var/lib/sentinel/data
EXPOSE 8080 9464
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2)"]
ENTRYPOINT ["sentinel"]
CMD ["serve"]
