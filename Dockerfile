# PipelineJobs Reactor image. No secret goes into it: the token secret arrives at run time as a
# file (REACTOR_SECRET_FILE, e.g. a docker secret) and the store/broker URLs as environment.
#
# Build:   docker build -t pipelinejobs-reactor .
#
# Consumer (the default command): a long-running RabbitMQ consumer; SIGTERM drains gracefully.
#   docker run -d --name reactor \
#     -e REACTOR_STORE_URI=mongodb://mongo:27017/reactor \
#     -e REACTOR_BROKER_URL='amqp://reactor:PASSWORD@rabbitmq:5672/%2F' \
#     -e REACTOR_SECRET_FILE=/run/secrets/reactor_secret \
#     -v "$PWD/secrets/reactor_secret:/run/secrets/reactor_secret:ro" \
#     pipelinejobs-reactor
#
# Actor mode (Abaco style): one message in MSG, one JSON outcome line on stdout, logs on stderr,
# exit code 0 (applied/duplicate) or 1 (rejected/retry):
#   docker run --rm \
#     -e MSG='{"uuid": "107…", "name": "finish", "token": "…"}' \
#     -e REACTOR_STORE_URI=mongodb://mongo:27017/reactor \
#     -e REACTOR_SECRET_FILE=/run/secrets/reactor_secret \
#     -v "$PWD/secrets/reactor_secret:/run/secrets/reactor_secret:ro" \
#     pipelinejobs-reactor invoke
# A job-status callback the same way: MSG holds the job JSON; uuid, token and optionally status
# or event come as environment variables (-e uuid=107… -e token=… -e status=FINISHED).
# HTTP callbacks (job-status callbacks and events in, queued with publisher confirms):
#   docker run -d --name reactor-http -p 8080:8080 \
#     -e REACTOR_STORE_URI=mongodb://mongo:27017/reactor \
#     -e REACTOR_BROKER_URL='amqp://reactor:PASSWORD@rabbitmq:5672/%2F' \
#     -e REACTOR_SECRET_FILE=/run/secrets/reactor_secret \
#     -v "$PWD/secrets/reactor_secret:/run/secrets/reactor_secret:ro" \
#     --health-cmd 'python -c "import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:8080/healthz\")"' \
#     pipelinejobs-reactor serve --host 0.0.0.0 --port 8080
# Any other subcommand works too: docker run --rm pipelinejobs-reactor fsm

# The wheel is built apart, so the source tree, tests and build tools stay out of the image.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REACTOR_CONFIG=/etc/reactor/config.yml
COPY --from=build /wheels /tmp/wheels
RUN pip install /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/reactor reactor
# The embedded default: every key commented out; configure through REACTOR_* variables.
COPY config.yml /etc/reactor/config.yml
# Relative paths (state_dir .reactor, the embedded SQLite store) land in the user's own home.
WORKDIR /var/lib/reactor
# Numeric, so the runtime can tell it is not root without reading the image's /etc/passwd.
USER 10001:10001

# `reactor serve` listens here (publish it with -p 8080:8080 when running that mode).
EXPOSE 8080

# The consumer rewrites its health file (--health-file, every 5 s) while its IO loop is alive;
# a file older than 60 s (or none) means it is stuck or gone. In serve mode, probe
# http://127.0.0.1:8080/healthz instead (docker run --health-cmd …).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, time; p = '/tmp/reactor-alive'; sys.exit(0 if os.path.exists(p) and time.time() - os.path.getmtime(p) < 60 else 1)"]

ENTRYPOINT ["reactor"]
CMD ["consume", "--health-file", "/tmp/reactor-alive"]
