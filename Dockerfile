# syntax=docker/dockerfile:1
# abkit: one image for every role (grpc, worker, web, migrate); the command picks the role.

# -- build: wheels for abkit and its dependencies -------------------------------------------------
FROM python:3.11-slim AS build
# A C compiler and OpenSSL's headers for abkit/core/_speedups.c (the assignment hot path).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY abkit ./abkit
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[otlp,prometheus,stream,fast]"

# -- runtime: no compiler, no sources, a non-root user ---------------------------------------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/abkit abkit
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "abkit[otlp,prometheus,stream,fast]" \
    && rm -rf /wheels \
    && python -c "from abkit.core import hashing; assert hashing.NATIVE, 'no native speedups'"
USER abkit
WORKDIR /var/lib/abkit
ENV PYTHONUNBUFFERED=1 \
    ABKIT_SPOOL_DIR=/var/lib/abkit/spool \
    ABKIT_GRPC_ADDRESS=0.0.0.0:50051 \
    ABKIT_WEB_ADDRESS=0.0.0.0:8000
EXPOSE 50051 8000 9464
ENTRYPOINT ["abkit"]
CMD ["serve"]
