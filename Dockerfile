# Serving image for slm-toolkit (CPU). Build:  docker build -t slm-toolkit .
# Run:  docker run -p 8000:8000 -v $PWD/runs:/runs slm-toolkit /runs/quickstart/06-quantize
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORKDIR /app
COPY pyproject.toml README.md ./
COPY slm_toolkit ./slm_toolkit
COPY recipes ./recipes
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0 && pip install .
# Build the quickstart's artifacts into the image so it serves something without a volume.
ARG BUILD_QUICKSTART=1
RUN if [ "$BUILD_QUICKSTART" = "1" ]; then slm run recipes/quickstart.yaml --run-dir /app/runs/quickstart; fi
EXPOSE 8000
RUN useradd --create-home slm && chown -R slm /app
USER slm
ENTRYPOINT ["slm", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["/app/runs/quickstart/final"]
