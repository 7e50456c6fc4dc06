# syntax=docker/dockerfile:1
# One image for all five Vigil services; pick one with the command, e.g.
#   docker run vigil service detector

# ---- build: install the pinned dependencies and Vigil into a virtualenv ----
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src

# requirements.lock pins every package of a development environment; used as constraints it
# pins Vigil's runtime dependencies without installing the test and lint tools.
COPY requirements.lock pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
COPY vigil/ vigil/
RUN pip install --no-cache-dir -c requirements.lock . \
    && vigil --help > /dev/null

# ---- runtime: the virtualenv only, run as an unprivileged user ----
FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="vigil" \
      org.opencontainers.image.description="Vigil incident-response pipeline services" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIGIL_HTTP_HOST=0.0.0.0 \
    VIGIL_LOG_FORMAT=json

RUN groupadd --system --gid 10001 vigil \
    && useradd --system --uid 10001 --gid vigil --home-dir /app --shell /usr/sbin/nologin vigil \
    && mkdir -p /app \
    && chown vigil:vigil /app

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

# reporter 8080, detector 8081, analyzer 8082, responder 8083, coordinator 8084
EXPOSE 8080 8081 8082 8083 8084

ENTRYPOINT ["vigil"]
CMD ["service", "reporter"]
