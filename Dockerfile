# Serving image for slm-toolkit (CPU).
#   docker build -t slm-toolkit .                                  # builds the quickstart's artifacts in
#   docker run -p 8000:8000 slm-toolkit                            # serves runs/quickstart/final
#   docker run -p 8000:8000 -v $PWD/runs:/runs slm-toolkit /runs/<name>/final   # any artifact
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false SLM_CACHE=/app/cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY slm_toolkit ./slm_toolkit
COPY recipes ./recipes
# The CPU build of torch first (a plain install would pull the multi-GB CUDA build).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 && pip install .
# Build the quickstart's artifacts into the image so it serves something without a volume.
ARG BUILD_QUICKSTART=1
RUN if [ "$BUILD_QUICKSTART" = "1" ]; then slm run recipes/quickstart.yaml --run-dir /app/runs/quickstart; fi
# serving/k8s.yaml runs the pod as runAsNonRoot, runAsUser 1000.
RUN useradd --create-home --uid 1000 slm && chown -R slm /app
USER 1000
EXPOSE 8000
# SIGTERM drains in-flight requests (up to 30 s), then exits: give `docker stop -t 45`.
STOPSIGNAL SIGTERM
# /ready is 503 until the model is loaded and warmed up (the slim image has no curl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2)"
ENTRYPOINT ["slm", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["/app/runs/quickstart/final"]
