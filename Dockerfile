# demucs_rr command line in a container: `docker run --rm -v "$PWD:/data" demucs-rr separate /data/song.mp3 -o /data/separated`
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/demucs_rr
COPY pyproject.toml README.md ./
COPY demucs_rr ./demucs_rr
COPY conf ./conf
# torch first, pinned, so that `pip install .` does not pick another build. Pass pip options
# with --build-arg TORCH_PIP="..." (e.g. an --index-url of CPU-only wheels for a smaller image).
ARG TORCH_PIP="torch==2.13.0"
RUN pip install --no-cache-dir $TORCH_PIP && pip install --no-cache-dir .

# Downloaded models are cached here: mount a volume to keep them between runs.
ENV DEMUCS_RR_CACHE=/cache
VOLUME ["/cache"]
WORKDIR /data
ENTRYPOINT ["demucs-rr"]
CMD ["--help"]
