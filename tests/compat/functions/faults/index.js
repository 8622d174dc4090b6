// Each kind of failure a function can have, chosen by event.kind.
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
exports.main = async (event) => {
  switch (event.kind) {
    case 'ok': return { pid: process.pid, uid: process.getuid() };
    case 'throw': console.error('about to throw'); throw new Error('boom');
    case 'reject': return Promise.reject(new TypeError('rejected on purpose'));
    case 'exit': process.exit(3); break;
    case 'unhandled':
      setTimeout(() => Promise.reject(new Error('late rejection')), 10);
      await sleep(2000);
      return 'unreachable';
    case 'loop': for (;;) { /* spin */ }
    case 'oom': {
      const hoard = [];
      for (;;) hoard.push(new Array(1e6).fill(Math.random()));
    }
    case 'crash': process.kill(process.pid, 'SIGSEGV'); await sleep(1000); return 'unreachable';
    case 'big': return 'x'.repeat(7 * 1024 * 1024);
    case 'callback': return undefined;
    default: return { unknown: event.kind };
  }
};
