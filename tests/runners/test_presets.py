"""Runner presets: the same rows on every runner, a portable graph, Dataflow options built for the user."""
import argparse
import os

import apache_beam as beam
import cloudpickle
import pytest

from pipelines.extract_graph import ExtractCorpus, build_handlers
from pipelines.manifest import open_folder, open_manifest
from pipelines.sample_corpus import make_sample_corpus
from runners.cli import main
from runners.presets import dataflow_args
from schemas.cache import CacheView
from schemas.config import EncodeConfig, ExtractConfig
from schemas.errors import ConfigError
from schemas.tables import table_schemas
from transforms.encoders.registry import resolve_encoders
from tests.beam_helpers import assert_same_cache_rows, cache_tables

FAST_ENCODERS = ["--image-encoder", "builtin:color-hog", "--audio-encoder", "builtin:mfcc-stats", "--text-encoder", "minilm"]


@pytest.fixture(scope="module")
def sample_manifest(tmp_path_factory) -> str:
    return make_sample_corpus(str(tmp_path_factory.mktemp("sample")), n=10, seed=1)


@pytest.fixture(scope="module")
def direct_output(sample_manifest, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("direct") / "cache")
    assert main(["extract", "--manifest", sample_manifest, "--output", output, "--run-id", "r", *FAST_ENCODERS]) == 0
    return output


def _leftovers(output: str) -> list[str]:
    """``_pending`` entries, temporary files, and data files that no table of the latest state references."""
    view = CacheView.open(output)
    committed = {os.path.normpath(path.removeprefix("file://")) for table in view.tables() for path in view.files(table)}
    found = []
    for root, _, names in os.walk(output):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, output)
            if "_delta_log" in relative.split(os.sep):
                continue
            if relative.startswith("_pending") or "beam-temp" in relative or ".tmp-" in name or os.path.normpath(path) not in committed:
                found.append(relative)
    return sorted(found)


@pytest.mark.parametrize("runner_args", [["--workers", "2"], ["--runner", "dask", "--workers", "2"]], ids=["direct-2-workers", "dask-local-cluster"])
def test_every_runner_writes_identical_rows(sample_manifest, direct_output, tmp_path, runner_args):
    output = str(tmp_path / "cache")
    assert main(["extract", "--manifest", sample_manifest, "--output", output, "--run-id", "r", *FAST_ENCODERS, *runner_args]) == 0
    direct, other = cache_tables(direct_output), cache_tables(output)
    assert len(direct) == 8
    assert_same_cache_rows(direct, other)
    assert _leftovers(output) == []


def test_the_whole_pipeline_serialises_for_a_remote_runner(sample_manifest, tokenizer_path, tmp_path):
    """A proxy for a Dataflow submission: the portable graph builds and every DoFn and model handler pickles."""
    encode = EncodeConfig(text_encoder="minilm", image_encoder="efficientnet-lite0", audio_encoder="resemblyzer")
    config = ExtractConfig()
    handlers = build_handlers(resolve_encoders(encode, config), encode, "cpu")
    corpus = open_manifest(sample_manifest)
    transform = ExtractCorpus(corpus, cache=str(tmp_path), attempt="r-00000000",
                              cached_files=[("samples", "part-0.parquet"), ("embeddings/text/x", "part-0.parquet")],
                              committed=[("samples", {"path": "part-0.parquet"})],
                              config=config, tokenizer_path=tokenizer_path, schemas=table_schemas([]), num_shards=2, handlers=handlers)
    pipeline = beam.Pipeline()
    _ = pipeline | transform
    proto = pipeline.to_runner_api()
    assert len(proto.components.transforms) > 20
    beam.Pipeline.from_runner_api(proto, pipeline.runner, pipeline._options)
    dofns = _dofns(pipeline)
    names = {type(fn).__name__ for fn in dofns}
    assert {"ExtractSampleFn", "_FormBatchesFn", "_RunInferenceDoFn", "_FinalizeSamplesFn", "_WriteShardFn", "_ReplaceFileFn",
            "_WritePendingListFn", "_ReadRangeFn", "_CachedRowsFn", "_DecideBucketFn"} <= names
    for obj in [transform, *handlers.values(), *(h.with_no_batching() for h in handlers.values()), *dofns]:
        restored = cloudpickle.loads(cloudpickle.dumps(obj))
        assert type(restored) is type(obj)
    handler = cloudpickle.loads(cloudpickle.dumps(handlers["text"]))
    assert handler.encoder.fingerprint() == handlers["text"].encoder.fingerprint()


@pytest.mark.parametrize("spread_over, folder, spread", [(2, False, True), (0, False, False), (1, False, False), (2, True, False)])
def test_the_records_of_a_small_manifest_are_shared_between_the_direct_runner_s_workers(
        sample_manifest, tokenizer_path, tmp_path, spread_over, folder, spread):
    """``--workers N`` (``RunnerChoice.spread_over``) shares a manifest's samples between the N workers, which claim
    them (``transforms.work_split``); one process, or a folder (of unknown size), keeps the runner's own split."""
    corpus = open_folder(os.path.dirname(sample_manifest)) if folder else open_manifest(sample_manifest)
    transform = ExtractCorpus(corpus, cache=str(tmp_path), attempt="r-00000000", cached_files=[], spread_over=spread_over,
                              claims_folder=str(tmp_path / "claims") if spread_over > 1 else None,
                              config=ExtractConfig(), tokenizer_path=tokenizer_path, schemas=table_schemas([]), num_shards=2)
    pipeline = beam.Pipeline()
    _ = pipeline | transform
    labels = {node.unique_name for node in pipeline.to_runner_api().components.transforms.values()}
    assert any(label.endswith("SpreadOverWorkers/GroupBySlot") for label in labels) == spread
    assert any(label.endswith("/Chunks") for label in labels) == (spread_over == 1)  # one process: chunks in threads


@pytest.mark.parametrize("committed", [False, True])
def test_a_run_on_a_new_cache_builds_no_stage_to_read_or_rewrite_committed_files(sample_manifest, tokenizer_path, tmp_path, committed):
    """Reading the committed samples for the join and rewriting superseded files cost a first run stages of their
    own (a tenth of a second or more); with nothing committed the graph has neither."""
    transform = ExtractCorpus(open_manifest(sample_manifest), cache=str(tmp_path), attempt="r-00000000",
                              cached_files=[("samples", ["part-0.parquet"])] if committed else [],
                              committed=[("samples", {"path": "part-0.parquet"})] if committed else [],
                              config=ExtractConfig(), tokenizer_path=tokenizer_path, schemas=table_schemas([]), num_shards=2)
    pipeline = beam.Pipeline()
    _ = pipeline | transform
    labels = {node.unique_name for node in pipeline.to_runner_api().components.transforms.values()}
    assert any(label.endswith("JoinCache/ReadCachedRows") for label in labels) == committed
    assert any(label.endswith("ReplaceSuperseded/Replace") for label in labels) == committed


def _dofns(pipeline: beam.Pipeline) -> list[beam.DoFn]:
    """The DoFn of every ParDo in the pipeline graph."""
    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, applied):
            if isinstance(applied.transform, beam.ParDo):
                found.append(applied.transform.fn)

    pipeline.visit(Visitor())
    return found


def _dataflow(**overrides) -> argparse.Namespace:
    values = dict(project="my-project", region="europe-west1", temp_location="gs://bucket/tmp", machine_type=None,
                  gpu_type=None, gpu_count=1, sdk_container_image=None, max_num_workers=None)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_dataflow_options_are_built_for_the_user():
    built = dataflow_args(_dataflow(machine_type="n1-standard-8", gpu_type="nvidia-tesla-t4", gpu_count=2,
                                    sdk_container_image="europe-docker.pkg.dev/p/r/mmfeat-gpu:1", max_num_workers=20))
    assert built[:4] == ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west1", "--temp_location=gs://bucket/tmp"]
    setup_file = next(a for a in built if a.startswith("--setup_file=")).split("=", 1)[1]
    assert os.path.basename(setup_file) == "setup.py" and os.path.isfile(setup_file)
    assert "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:2;install-nvidia-driver" in built
    assert "--machine_type=n1-standard-8" in built and "--max_num_workers=20" in built


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(project=None), "needs --project"),
        (dict(temp_location="/tmp/x"), "must be a gs:// folder"),
        (dict(gpu_type="nvidia-tesla-t4"), "--gpu-type needs --sdk-container-image"),
    ],
)
def test_dataflow_option_mistakes_fail_before_start(overrides, message):
    with pytest.raises(ConfigError, match=message):
        dataflow_args(_dataflow(**overrides))


def test_dataflow_without_gcp_extras_says_what_to_install(sample_manifest, tmp_path, capsys):
    argv = ["extract", "--manifest", sample_manifest, "--output", str(tmp_path / "o"), "--runner", "dataflow",
            "--project", "p", "--region", "r", "--temp-location", "gs://b/t"]
    assert main(argv) == 2
    assert "apache-beam[gcp]" in capsys.readouterr().err


def test_bad_dask_address_fails_before_start(sample_manifest, tmp_path, capsys):
    argv = ["extract", "--manifest", sample_manifest, "--output", str(tmp_path / "o"), "--runner", "dask", "--dask-address", "localhost:8786"]
    assert main(argv) == 2
    assert "--dask-address must look like tcp://" in capsys.readouterr().err


def test_portable_presets_name_the_runner_and_need_a_master(sample_manifest, tmp_path, capsys):
    from runners.presets import build_runner

    choice = build_runner("flink", argparse.Namespace(), ["--flink_master=localhost:8081", "--flink_job_server_jar=/jars/x.jar"])
    assert choice.runner == "FlinkRunner"
    assert choice.options.get_all_options()["flink_master"] == "localhost:8081"
    assert main(["extract", "--manifest", sample_manifest, "--output", str(tmp_path / "o"), "--runner", "spark"]) == 2
    assert "--runner spark needs --spark_master_url" in capsys.readouterr().err
