# GPU worker image for Dataflow (or any Beam portable runner): CUDA runtime, Python 3.11, mmfeat with the
# pinned dependencies of setup.py, and Beam's SDK harness as entry point.
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/mmfeat-gpu:0.1.0 .
#   docker push  REGION-docker.pkg.dev/PROJECT/REPO/mmfeat-gpu:0.1.0
# then: mmfeat extract ... --runner dataflow --sdk-container-image <that tag> --gpu-type nvidia-tesla-t4
FROM apache/beam_python3.11_sdk:2.77.0 AS beam

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gcc \
 && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/mmfeat
COPY setup.py README.md ./
COPY schemas schemas
COPY transforms transforms
COPY pipelines pipelines
COPY runners runners
COPY trainer trainer
# On Linux, PyPI's torch==2.13.0 is the CUDA build. Beam's GCP extras are needed by Dataflow workers.
# librosa's first call writes numba's cache into site-packages (about 25 s): do it now, not on the workers.
RUN pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir . "apache-beam[gcp]==2.77.0" \
 && python -c "import numpy, librosa; librosa.feature.mfcc(y=numpy.zeros(16000, 'float32'), sr=16000)"

COPY --from=beam /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
