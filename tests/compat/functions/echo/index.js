exports.main = async (event, context) => {
  console.log('echo called with', JSON.stringify(event));
  return {
    event,
    context: {
      request_id: context.request_id,
      function_name: context.function_name,
      namespace: context.namespace,
      memory_limit_in_mb: context.memory_limit_in_mb,
      time_limit_in_ms: context.time_limit_in_ms,
      environment: JSON.parse(context.environment || '{}'),
    },
    env: {
      TCB_ENV: process.env.TCB_ENV,
      SCF_NAMESPACE: process.env.SCF_NAMESPACE,
      TCB_CONTEXT_CNFG: process.env.TCB_CONTEXT_CNFG,
      GREETING: process.env.GREETING,
      TCB_SEQID: process.env.TCB_SEQID,
      TCB_SOURCE: process.env.TCB_SOURCE,
      hasSecretId: Boolean(process.env.TENCENTCLOUD_SECRETID),
      secretIdIsTemporary: String(process.env.TENCENTCLOUD_SECRETID || '').startsWith('tmp:'),
      platformVarsVisible: Object.keys(process.env).filter((k) => k.startsWith('YUN_') && k !== 'YUN_NODE_LAYER' && k !== 'YUN_PRELOAD'),
    },
    uid: process.getuid(),
    pid: process.pid,
  };
};
