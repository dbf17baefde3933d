# The tidemark-bridge image. Build context: the repository root.
#   docker build -t tidemark-bridge .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (bundled): it needs a C toolchain,
# make, cmake for some features, zlib, and OpenSSL's headers found with pkg-config
# (TLS and SASL to Kafka).
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake zlib1g-dev \
        libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p tidemark-bridge \
    && cp target/release/tidemark-bridge /usr/local/bin/

FROM debian:bookworm-slim
# libssl3: the bridge links the system OpenSSL; ca-certificates: the roots that
# ssl.ca.location can point at (/etc/ssl/certs/ca-certificates.crt).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 tidemark
COPY --from=build /usr/local/bin/tidemark-bridge /usr/local/bin/tidemark-bridge
USER tidemark
EXPOSE 9187
ENV TIDEMARK_HTTP=0.0.0.0:9187
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9187/healthz || exit 1
ENTRYPOINT ["tidemark-bridge"]
