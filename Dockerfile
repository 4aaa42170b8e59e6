# One image for every eaio service; the compose file picks the sub-command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
COPY config ./config
ENV EAIO_DATA_DIR=/data
VOLUME ["/data"]
ENTRYPOINT ["eaio"]
