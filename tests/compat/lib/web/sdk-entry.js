// The js-sdk as a web app bundles it, plus the two lines a web app adds to use Yun.
import cloudbase from '@cloudbase/js-sdk';

window.cloudbase = cloudbase;
window.connectYun = (yunUrl, env) => {
  const app = cloudbase.init({ env, endPointMode: 'CLOUD_API' });
  app.registerEndPoint(`${yunUrl.replace(/^https?:/, '')}/web`, yunUrl.startsWith('https:') ? 'https' : 'http');
  return app;
};
