"""``feast materialize`` without a protobuf per value: a Feast compute engine that hands the offline
store's Arrow table straight to pgfeatures' COPY load.

``feature_store.yaml``::

    batch_engine:
      type: pgfeatures.feast.PgfeaturesComputeEngine

Feast's local engine reads the offline data as Arrow, then turns every value into a protobuf
``Value`` (``_convert_arrow_to_proto``) before calling the online store, which turns them back:
most of a large materialization's time. This engine is Feast's local engine with one change: when
the online store is pgfeatures, the output step writes the Arrow table itself (typed columns,
event times, newest wins; ``PgfeaturesOnlineStore.write_arrow``). Any other online store, and the
offline write, go exactly as in Feast's local engine.
"""

from __future__ import annotations

from typing import Any, Literal

from feast.infra.common.materialization_job import MaterializationJobStatus
from feast.infra.compute_engines.local.arrow_table_value import ArrowTableValue
from feast.infra.compute_engines.local.compute import LocalComputeEngine, LocalComputeEngineConfig
from feast.infra.compute_engines.local.feature_builder import LocalFeatureBuilder
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.compute_engines.local.nodes import LocalOutputNode

from .online_store import PgfeaturesOnlineStore

ENGINE_TYPE = "pgfeatures.feast.PgfeaturesComputeEngine"


class PgfeaturesComputeEngineConfig(LocalComputeEngineConfig):
    """``batch_engine:`` settings: those of Feast's local engine."""

    type: Literal["pgfeatures.feast.PgfeaturesComputeEngine"] = ENGINE_TYPE  # type: ignore[assignment]


class _ArrowOutputNode(LocalOutputNode):
    """Feast's output step, writing Arrow to a pgfeatures online store (no protobuf per value)."""

    def execute(self, context: Any) -> Any:
        online_store = context.online_store
        view = self.feature_view
        if not isinstance(online_store, PgfeaturesOnlineStore) or not view.online:
            return super().execute(context)
        table = self.get_single_table(context).data
        if table.num_rows and view.offline:  # the offline write, as Feast's node does it
            context.offline_store.offline_write_batch(
                config=context.repo_config, feature_view=view, table=table, progress=lambda x: None
            )
        output = ArrowTableValue(data=table)
        context.node_outputs[self.name] = output
        if table.num_rows:
            online_store.write_arrow(context.repo_config, view, table)
        return output


class _ArrowFeatureBuilder(LocalFeatureBuilder):
    def build_output_nodes(self, view: Any, input_node: Any) -> Any:
        root_view: Any = self.dag_root.view
        node = _ArrowOutputNode("output", root_view, inputs=[input_node])
        self.nodes.append(node)
        return node


class PgfeaturesComputeEngine(LocalComputeEngine):
    """Feast's local compute engine whose materialization writes Arrow to pgfeatures (see the module docstring)."""

    def _materialize_one(self, registry: Any, task: Any, **kwargs: Any) -> LocalMaterializationJob:
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        context = self.get_execution_context(registry, task)
        backend = self._get_backend(context)
        try:
            plan = _ArrowFeatureBuilder(registry, task, backend=backend).build()
            plan.execute(context)
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED)
        except Exception as exc:  # Feast reports a failed job through its status, as its own engine does
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.ERROR, error=exc)
