# One image for web, worker and migrations. GPU workers run it on an NVIDIA host with the
# container toolkit; torch here is the CPU/CUDA build the host's pip resolves, pinned by
# constraints.txt on our own machines (set TORCH_SPEC for a CUDA wheel index if needed).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY services services
COPY workers workers
COPY web web
COPY migrations migrations
RUN pip install -c constraints.txt . && useradd --create-home dermatriage
USER dermatriage
EXPOSE 8000
CMD ["gunicorn", "-w", "4", "--threads", "4", "-b", "0.0.0.0:8000", "web.wsgi:app"]
