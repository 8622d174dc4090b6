// Tries to use this function's injected credential in another env.
const tcb = require('@cloudbase/node-sdk');
exports.main = async (event) => {
  const app = tcb.init({ env: event.env });
  try {
    const r = await app.callFunction({ name: 'echo', data: {} });
    return { reached: true, result: r.result };
  } catch (e) {
    return { reached: false, code: e.code, message: e.message };
  }
};
