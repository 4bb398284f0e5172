"""Training stages. Each says which networks it trains and how to compute one update; the loop in
onestep.train.loop runs any of them under Ray Train + DeepSpeed (or in one plain process)."""

from onestep.stages.adversarial import AdversarialStage
from onestep.stages.dmd import DMDStage
from onestep.stages.fada import FADAStage
from onestep.stages.osa_lcm import OSALCMStage
from onestep.stages.sync import SyncStage
from onestep.stages.teacher import TeacherStage

STAGES = {"teacher": TeacherStage, "dmd": DMDStage, "adversarial": AdversarialStage,
          "fada": FADAStage, "osa_lcm": OSALCMStage, "sync": SyncStage}


def stage_class(name: str):
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"train.stage: unknown stage {name!r}; available: "
                         f"{', '.join(STAGES)}") from None


def build_stage(cfg):
    return stage_class(cfg.train.stage)(cfg)
