# The `yun` binary with what its nodes run functions with (Node.js and npm for the SDK
# layer and dependencies, slirp4netns for sandboxed instances' internet access).
#   docker build -t yun .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p yun-cli

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm slirp4netns ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/yun /usr/local/bin/yun
VOLUME /var/lib/yun
EXPOSE 8787
ENTRYPOINT ["yun"]
CMD ["serve"]
