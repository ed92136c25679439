# One image for web, worker and migrations: the project's wheel (code, migrations and page
# templates as package data) installed without the source tree. GPU workers run it on an
# NVIDIA host with the container toolkit; torch is the build the host's pip resolves, pinned
# by constraints.txt on our own machines (set a CUDA wheel index if needed).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY services services
COPY workers workers
COPY web web
COPY migrations migrations
RUN pip wheel --no-deps -w /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY constraints.txt /tmp/constraints.txt
COPY --from=build /wheels /wheels
RUN pip install -c /tmp/constraints.txt /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home dermatriage
USER dermatriage
WORKDIR /home/dermatriage
EXPOSE 8000
# The web server command lives in one place: `dermatriage web` (services/cli/ops.py).
CMD ["dermatriage", "web", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
