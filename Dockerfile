# syntax=docker/dockerfile:1
# online-gim listening to the embedded synthetic speech stream, side service on port 8000.
#
#   docker build -t online-gim .
#   export ONLINE_GIM_TOKEN=$(openssl rand -hex 16)
#   docker run --rm -it -p 8000:8000 -e ONLINE_GIM_TOKEN online-gim
#
# The steps are the README's "Installation by hand": the Debian runtime packages, a venv,
# `pip install .`. Serving on 0.0.0.0 needs a token (ONLINE_GIM_TOKEN or --token): without one,
# `listen` refuses to start. deploy/docker-compose.yml runs it with Prometheus and Grafana.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ONLINE_GIM_CACHE=/opt/online-gim/cache \
    PATH=/app/.venv/bin:$PATH
WORKDIR /app

# Debian runtime packages: espeak-ng, libespeak-ng1 (the synthetic corpus), libportaudio2 (microphone)
COPY scripts/install-system-deps.sh scripts/
RUN scripts/install-system-deps.sh --runtime && rm -rf /var/lib/apt/lists/*

# The project, installed as a package (the presets are its package data). The pip cache mount
# only keeps downloaded wheels between builds.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv .venv \
    && .venv/bin/python -m pip install -q --upgrade pip \
    && .venv/bin/python -m pip install -q .

# The default synthetic corpus (what `listen` generates on first use), made once here
RUN .venv/bin/python -c "from online_gim.streams.corpora.synth import default_corpus; print(default_corpus())"

# An unprivileged user; /data for state directories, summaries and features (mount a volume there)
RUN useradd --create-home --uid 1000 online-gim && mkdir /data && chown online-gim /data
USER online-gim

EXPOSE 8000
ENTRYPOINT ["online-gim"]
CMD ["listen", "--http", "0.0.0.0:8000"]
