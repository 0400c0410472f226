<%--
  Multi-valued response headers: ?cookies=N (default 3) Set-Cookie headers
  "c<i>=v<i>; Path=/echo" (the 2nd adds "; HttpOnly", the 3rd "; Max-Age=60"), ?repeat=M
  (default 3) headers "X-Echo-Multi: value-<i>", plus every ?header=Name:Value.
  The JSON body lists what was set, in order.
--%><%@ page session="false" isErrorPage="true" trimDirectiveWhitespaces="true"
    import="java.util.*" %><%@ include file="/WEB-INF/jspf/common.jspf" %><%
    tagResponse(response);
    long cookies = longParam(request, "cookies", 3);
    long repeat = longParam(request, "repeat", 3);
    List<String[]> set = new ArrayList<>();
    for (int i = 1; i <= cookies; i++) {
        String v = "c" + i + "=v" + i + "; Path=/echo";
        if (i == 2) {
            v += "; HttpOnly";
        } else if (i == 3) {
            v += "; Max-Age=60";
        }
        response.addHeader("Set-Cookie", v);
        set.add(new String[] {"Set-Cookie", v});
    }
    for (int i = 1; i <= repeat; i++) {
        String v = "value-" + i;
        response.addHeader("X-Echo-Multi", v);
        set.add(new String[] {"X-Echo-Multi", v});
    }
    set.addAll(addHeaderParams(request, response));
    Map<String, Object> r = new LinkedHashMap<>();
    r.put("node", nodeRoute());
    r.put("set", set);
    sendJson(response, r);
%>
