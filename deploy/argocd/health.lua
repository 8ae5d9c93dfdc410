-- Argo CD health check for modeldeploy.dev/ModelDeployment.
-- Install as argocd-cm key resource.customizations.health.modeldeploy.dev_ModelDeployment
-- (deploy/argocd/argocd-cm-patch.yaml holds this exact text; a test keeps the two identical).
-- Reads only what the operator promises: status.observedGeneration and the Degraded, Ready and
-- Progressing conditions, whose types never disappear between releases.
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  return reason
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

-- 1. The status must describe the spec Argo CD just applied.
if obj.status == nil or obj.status.observedGeneration == nil or
    (generation ~= nil and obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the operator to observe generation " .. generation
  else
    hs.message = "Waiting for the operator to report status"
  end
  return hs
end

-- 2. Something is wrong: the reason names it (Unschedulable, CrashLoopBackOff, RolledBack, ...).
local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end

-- 3. The target version serves on enough pods, and Triton says so.
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

-- 4. A canary or blue-green rollout waits at a pause for rollout.promote (as a paused Argo Rollout).
local progressing = condition("Progressing")
if progressing ~= nil and progressing.status == "True" and progressing.reason == "RolloutPaused" then
  hs.status = "Suspended"
  hs.message = describe(progressing)
  return hs
end

-- 5. A version rollout, rolling update, canary or blue-green rollout is under way.
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing)
  return hs
end

-- 6. Scaled to zero on purpose (no autoscaler owns the replica count).
if obj.spec ~= nil and obj.spec.replicas == 0 and obj.spec.autoscaling == nil then
  hs.status = "Suspended"
  hs.message = "Scaled to zero replicas"
  return hs
end

-- 7. Not ready yet, nothing wrong: say what Ready is waiting for.
hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the Ready condition"
end
return hs
